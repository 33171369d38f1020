"""What a client's messages mean for its stream, without I/O.

:class:`Inbound` takes each message the client sent and answers with what the session
must do: set the stream up (``start``), queue decoded audio (and maybe warn the client
and pause reading), answer a ``snapshot``, or finish (``stop``). It owns the order
messages may come in, the audio limits, the decoder and the queue of unprocessed audio
(:class:`~streamer.server.audioqueue.AudioQueue`); a message that breaks the protocol
raises the :class:`~streamer.errors.StreamerError` that ends the stream, and
:func:`~streamer.server.protocol.close_code` maps it to its close code. The session only
moves bytes and runs the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamer.audio import SAMPLE_RATE, PcmDecoder
from streamer.errors import ProtocolError
from streamer.server import protocol
from streamer.server.audioqueue import AudioQueue
from streamer.server.protocol import StartRequest, StreamTooLong


@dataclass(frozen=True)
class Start:
    """Set the stream up from this ``start`` message (then call :meth:`Inbound.begin`)."""

    message: dict[str, Any]


@dataclass(frozen=True)
class Audio:
    """Audio was queued: ``seconds`` of it; send ``warning`` if there is one; ``pause``
    reading until the queue drains."""

    seconds: float
    warning: dict[str, Any] | None = None
    pause: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Send the stream's state now."""


@dataclass(frozen=True)
class Stop:
    """The client is done: process what was accepted, send the last events and ``end``."""


Action = Start | Audio | Snapshot | Stop


class Inbound:
    """The client's side of one stream.

    Args:
        max_pending: Seconds of unprocessed audio before reading pauses.
        max_stream_seconds: Most seconds of audio a stream may send (0: no limit).
    """

    def __init__(self, max_pending: float, max_stream_seconds: float = 0.0) -> None:
        self.max_stream_seconds = max_stream_seconds
        self.audio = AudioQueue(max_pending)
        self.decoder: PcmDecoder | None = None
        self._start_seen = False

    @property
    def started(self) -> bool:
        """Whether the stream is set up (audio is accepted)."""
        return self.decoder is not None

    def receive(self, message: str | bytes, now: float) -> Action:
        """What ``message``, received at ``now`` (monotonic seconds), asks for."""
        if not self._start_seen:
            if isinstance(message, bytes):
                raise ProtocolError("audio before start: send a start message first")
            parsed = protocol.parse_text(message)
            if parsed["type"] != "start":
                raise ProtocolError(f"the first message must be start, got "
                                    f"{protocol.excerpt(parsed['type'])}")
            self._start_seen = True
            return Start(parsed)
        if isinstance(message, bytes):
            return self._audio(message, now)
        parsed = protocol.parse_text(message)
        if parsed["type"] == "stop":
            return Stop()
        if parsed["type"] == "snapshot":
            return Snapshot()
        if parsed["type"] == "start":
            raise ProtocolError("start was already received for this stream")
        raise protocol.UnknownMessage(
            f"unknown message type {protocol.excerpt(parsed['type'])}")

    def begin(self, request: StartRequest) -> None:
        """The stream is set up for ``request``: audio in its format is accepted now."""
        self.decoder = PcmDecoder(request.sample_rate, request.encoding, request.channels)

    def _audio(self, frame: bytes, now: float) -> Audio:
        decoder = self.decoder
        if decoder is None:
            raise ProtocolError("audio before the stream is ready")
        incoming = (decoder.samples_in + len(frame) // decoder.frame_bytes) / decoder.sample_rate
        if self.max_stream_seconds and incoming > self.max_stream_seconds:
            raise StreamTooLong(f"streams are limited to {self.max_stream_seconds:g} s")
        samples = decoder.decode(frame)
        pressure = self.audio.add(samples, now)
        warning = None
        if pressure.warn:
            warning = protocol.warning_message(
                "falling_behind", f"processing is {pressure.behind:.1f} s behind the audio "
                "received; reading from this stream pauses until it catches up",
                behind=round(pressure.behind, 3))
        return Audio(len(samples) / SAMPLE_RATE, warning, pressure.pause)


__all__ = ["Action", "Audio", "Inbound", "Snapshot", "Start", "Stop"]
