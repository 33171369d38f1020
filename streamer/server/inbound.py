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

import numpy as np

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
class Context:
    """The ``start.context`` audio is complete: prime the engine with ``samples`` (16
    kHz), then treat ``audio`` (what the frame held past it) as any audio."""

    samples: np.ndarray
    audio: Audio


@dataclass(frozen=True)
class Snapshot:
    """Send the stream's state now."""


@dataclass(frozen=True)
class Stop:
    """The client is done: process what was accepted, send the last events and ``end``."""


Action = Start | Audio | Context | Snapshot | Stop


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
        self._context: list[np.ndarray] = []  # the start.context audio received so far
        self._context_kept = 0  # samples in self._context
        self._context_left = 0  # samples of it still to come
        #: Most samples of a context that are kept (the engine uses no more): set by the
        #: session once the engine exists, before any audio is read.
        self.context_limit: int | None = None

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

    def expect_context(self, seconds: float) -> None:
        """The first ``seconds`` of audio are the context (``start.context``, as many as
        the stream had before its resume point); called before any audio is read."""
        self._context_left = int(round(seconds * SAMPLE_RATE))

    def tail(self) -> np.ndarray:
        """The decoder's last samples, once the input is over: audio to process, unless
        the stream stopped inside its context (then there is none: nothing after the
        resume point came)."""
        tail = self.decoder.flush()
        return tail[:0] if self._context_left else tail

    def _audio(self, frame: bytes, now: float) -> Audio | Context:
        decoder = self.decoder
        if decoder is None:
            raise ProtocolError("audio before the stream is ready")
        incoming = (decoder.samples_in + len(frame) // decoder.frame_bytes) / decoder.sample_rate
        if self.max_stream_seconds and incoming > self.max_stream_seconds:
            raise StreamTooLong(f"streams are limited to {self.max_stream_seconds:g} s")
        samples = decoder.decode(frame)
        if self._context_left:
            taken = samples[:self._context_left]
            self._keep_context(taken)
            self._context_left -= len(taken)
            if self._context_left:
                return Audio(0.0)
            context, self._context = np.concatenate(self._context), []
            return Context(context, self._queue(samples[len(taken):], now))
        return self._queue(samples, now)

    def _keep_context(self, samples: np.ndarray) -> None:
        """Add to the context, keeping only its last ``context_limit`` samples: a client
        may send more than the engine uses, and must not hold more memory for it."""
        self._context.append(samples)
        self._context_kept += len(samples)
        limit = self.context_limit
        while limit is not None and self._context_kept - len(self._context[0]) >= limit:
            self._context_kept -= len(self._context.pop(0))

    def _queue(self, samples: np.ndarray, now: float) -> Audio:
        pressure = self.audio.add(samples, now)
        warning = None
        if pressure.warn:
            warning = protocol.warning_message(
                "falling_behind", f"processing is {pressure.behind:.1f} s behind the audio "
                "received; reading from this stream pauses until it catches up",
                behind=round(pressure.behind, 3))
        return Audio(len(samples) / SAMPLE_RATE, warning, pressure.pause)


__all__ = ["Action", "Audio", "Context", "Inbound", "Snapshot", "Start", "Stop"]
