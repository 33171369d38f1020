"""The wire protocol of ``/v1/stream``: message parsing, errors and close codes.

See ``docs/PROTOCOL.md`` for the prose version. Nothing here touches a socket.
"""
from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from streamer.audio import ENCODINGS, MAX_RATE, MIN_RATE
from streamer.config import StreamConfig
from streamer.errors import AudioFormatError, ConfigError, ProtocolError, StreamerError

PATH = "/v1/stream"
START_FIELDS = {"type", "sample_rate", "encoding", "channels", "config", "resume", "resume_id",
                "offset", "context"}
#: Most seconds of audio a resumed stream may send before its resume point
#: (``start.context``): more than any preset's buffer, so a client need not know it.
MAX_CONTEXT_SECONDS = 30.0
#: A ``resume_id``: the random id under which the server saves a stream's state.
RESUME_ID = re.compile(r"[0-9a-f]{32}")
#: Longest ``message`` of an ``error`` event: a message never echoes much client input.
MAX_MESSAGE_CHARS = 300
_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = _EXCERPT.maxother = 40
_EXCERPT.maxlevel = 2
#: Close code sent after ``end`` when the server shuts down (SIGTERM) mid-stream.
GOING_AWAY = 1001
NORMAL_CLOSURE = 1000
#: The websocket close code of each error ``code``: 1007 for data that cannot be decoded,
#: 1009 for too large a message, 1013 for a server at capacity, 1011 for the server's own
#: failures; every other refusal is a policy violation, 1008.
CLOSE_CODES = {
    "bad_json": 1007, "bad_audio": 1007, "bad_audio_file": 1007,
    "frame_too_large": 1009,
    "too_many_connections": 1013,
    "internal_error": 1011, "model_load_error": 1011, "store_unavailable": 1011,
}


class BadJson(ProtocolError):
    """A text message that is not a JSON object."""

    code = "bad_json"


class UnknownMessage(ProtocolError):
    """A JSON message whose ``type`` the server does not know."""

    code = "unknown_message"


class FrameTooLarge(ProtocolError):
    """A binary frame above ``max_frame_bytes``."""

    code = "frame_too_large"


class StreamTooLong(ProtocolError):
    """A stream above ``max_stream_seconds`` of audio."""

    code = "stream_too_long"


class IdleTimeout(ProtocolError):
    """No message from the client for ``idle_timeout`` seconds."""

    code = "idle_timeout"


class TooManyConnections(StreamerError):
    """The server is at ``max_connections``."""

    code = "too_many_connections"


class SlowClient(StreamerError):
    """The client did not read its events for ``send_timeout`` seconds."""

    code = "slow_client"


@dataclass(frozen=True)
class StartRequest:
    """A validated ``start`` message."""

    sample_rate: int
    encoding: str
    channels: int
    config: StreamConfig = field(default_factory=StreamConfig)
    #: A sealed speaker state of an earlier stream to continue (``None``: fresh).
    resume: str | None = None
    #: The ``resume_id`` of an earlier stream whose saved state to continue.
    resume_id: str | None = None
    #: Seconds added to every time the stream sends (a resumed stream's position);
    #: ``None``: 0, or the saved position of ``resume_id``.
    offset: float | None = None
    #: Seconds of audio that come first and precede the resume point: analysed as the
    #: stream before the cut analysed them, not decided again (0: none).
    context: float = 0.0


def parse_text(text: str) -> dict[str, Any]:
    """A text message as a JSON object with a string ``type``."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise BadJson("text messages must be JSON objects; this one is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadJson(f"text messages must be JSON objects, got {type(message).__name__}")
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('a message needs a string "type" field')
    return message


def parse_start(message: Mapping[str, Any]) -> StartRequest:
    """Validate a ``start`` message (raises ProtocolError, AudioFormatError, ConfigError)."""
    unknown = sorted(set(message) - START_FIELDS)
    if unknown:
        raise ProtocolError(f"unknown field(s) in start: {names(unknown)}")
    if "sample_rate" not in message:
        raise ProtocolError("start needs sample_rate (Hz)")
    rate = message["sample_rate"]
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFormatError(
            f"sample_rate must be a whole number between {MIN_RATE} and {MAX_RATE}, "
            f"got {excerpt(rate)}")
    encoding = message.get("encoding", "pcm_s16le")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise AudioFormatError(
            f"encoding must be one of {', '.join(sorted(ENCODINGS))}, got {excerpt(encoding)}")
    channels = message.get("channels", 1)
    if isinstance(channels, bool) or channels not in (1, 2):
        raise AudioFormatError(f"channels must be 1 or 2, got {excerpt(channels)}")
    config = StreamConfig.from_dict(message.get("config"))
    resume = message.get("resume")
    if resume is not None and not isinstance(resume, str):
        raise ProtocolError("resume must be the state string of an earlier end or snapshot")
    resume_id = message.get("resume_id")
    if resume_id is not None and (not isinstance(resume_id, str)
                                  or not RESUME_ID.fullmatch(resume_id)):
        raise ProtocolError("resume_id must be the resume_id of an earlier stream's ready "
                            "(32 hexadecimal digits)")
    if resume is not None and resume_id is not None:
        raise ProtocolError("give resume (a state) or resume_id, not both")
    offset = message.get("offset")
    if offset is not None and not _is_seconds(offset, 1e9):
        raise ProtocolError(f"offset must be seconds >= 0, got {excerpt(offset)}")
    context = message.get("context", 0)
    if not _is_seconds(context, MAX_CONTEXT_SECONDS):
        raise ProtocolError(f"context must be seconds between 0 and {MAX_CONTEXT_SECONDS:g}, "
                            f"got {excerpt(context)}")
    if context and resume is None and resume_id is None:
        raise ProtocolError("context is the audio before a resume point: it needs resume or "
                            "resume_id")
    return StartRequest(sample_rate=rate, encoding=encoding, channels=int(channels),
                        config=config, resume=resume, resume_id=resume_id,
                        offset=None if offset is None else float(offset),
                        context=float(context))


def _is_seconds(value: Any, most: float) -> bool:
    """Whether ``value`` is a JSON number of seconds from 0 to ``most``."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and 0 <= value <= most)


def close_code(error: StreamerError) -> int:
    """The websocket close code that goes with ``error``."""
    return CLOSE_CODES.get(error.code, 1008)


def excerpt(value: Any) -> str:
    """A short ``repr`` of client input, for a message."""
    return _EXCERPT.repr(value)


def names(keys: list[str], most: int = 5) -> str:
    """Field names from a client, a few of them, each cut short."""
    shown = ", ".join(_EXCERPT.repr(key)[1:-1] for key in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def error_message(error: StreamerError) -> dict[str, Any]:
    message = str(error)
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    return {"type": "error", "code": error.code, "message": message}


def warning_message(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "warning", "code": code, **extra, "message": message}


def ready_message(session: str, request: StartRequest, models: Mapping[str, Any],
                  config: Mapping[str, Any], limits: Mapping[str, Any], resume_id: str,
                  resumed: list[str] | None = None, offset: float = 0.0,
                  context: float | None = None) -> dict[str, Any]:
    """The answer to ``start``; a resumed stream's (``resumed``: the speakers it starts
    with) or one with a clock offset also echoes ``resumed`` and ``offset``, and one that
    sends a context, the seconds of it expected (``context``)."""
    ready = {"type": "ready", "session": session, "sample_rate": request.sample_rate,
             "encoding": request.encoding, "channels": request.channels,
             "models": dict(models), "config": dict(config), "limits": dict(limits),
             "resume_id": resume_id}
    if resumed is not None or offset:
        ready.update(resumed=list(resumed or []), offset=offset)
    if context is not None:
        ready["context"] = context
    return ready


def state_message(kind: str, state: str, position: float, resume_id: str) -> dict[str, Any]:
    """``snapshot`` (or the state fields of ``end``): the sealed speaker memory after
    ``position`` seconds of the stream, saved under ``resume_id``."""
    return {"type": kind, "state": state, "position": round(position, 3),
            "resume_id": resume_id}


def end_message(session: str, duration: float, speakers: list[dict[str, Any]],
                saved: Mapping[str, Any], reconnect: bool = False) -> dict[str, Any]:
    """The last event of a stream, with the fields of its :func:`state_message`
    (``saved``); ``reconnect`` when the server was drained."""
    end = {**saved, "type": "end", "session": session, "duration": round(duration, 3),
           "speakers": speakers}
    if reconnect:
        end["reconnect"] = True
    return end


def turn_message(event: Any, offset: float = 0.0) -> dict[str, Any]:
    """An engine event (turn, region, speaker change) as sent, its times moved by a
    resumed stream's ``offset``."""
    message = event.to_dict()
    if offset:
        for key in ("start", "end", "time"):
            if key in message:
                message[key] = round(message[key] + offset, 3)
    return message


def encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


__all__ = [
    "PATH", "StartRequest", "parse_text", "parse_start", "error_message", "warning_message",
    "encode", "excerpt", "names", "close_code", "ready_message", "state_message",
    "end_message", "turn_message", "CLOSE_CODES", "BadJson", "UnknownMessage", "FrameTooLarge",
    "StreamTooLong", "IdleTimeout",
    "TooManyConnections", "SlowClient", "ConfigError",
]
