"""What the session feeds its engine, and what it sends for what the engine decided,
without I/O.

The processing side of one stream, as :class:`~streamer.server.inbound.Inbound` is the
receiving side. :meth:`Outbound.next` says what to do next: feed these samples (up to
``max_feed`` seconds, held back until they complete the engine's next step, since the
engine decides nothing before; all of them once the input is over or reading is
paused), wait for more audio, or stop (the input is over and all of it was fed).
:meth:`Outbound.fed` takes what one feed gave and answers with the messages to send
(times moved by a resumed stream's offset), whether reading may go on (the backlog is
down again) and whether the stream's state is due to be saved (every ``save_interval``
seconds of processed audio). The session runs the engine calls, sends, and saves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.audio import SAMPLE_RATE
from streamer.server import protocol
from streamer.server.audioqueue import AudioQueue


@dataclass(frozen=True)
class Feed:
    """Feed ``samples`` to the engine; they became worth feeding at ``ready_at``
    (monotonic seconds: the arrival of the frame that completed the engine's step)."""

    samples: np.ndarray
    ready_at: float


@dataclass(frozen=True)
class Wait:
    """Nothing worth feeding yet: wait until more audio is queued (or the input ends)."""


@dataclass(frozen=True)
class Done:
    """The input is over and every queued sample was fed."""


@dataclass(frozen=True)
class Fed:
    """After a feed: ``messages`` to send, whether reading may ``resume``, whether the
    stream's state is due to be ``save``\\ d, and the seconds fed and still queued."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    resume: bool = False
    save: bool = False
    seconds: float = 0.0
    backlog: float = 0.0


class Outbound:
    """The processing side of one stream.

    Args:
        audio: The stream's queue of received, unprocessed audio (the inbound side's).
        max_feed: Most seconds of audio in one feed, so that one stream never holds the
            scheduler's tick for long.
        save_interval: Seconds of processed audio between two saves of the state (0:
            never).
        offset: Seconds added to every time sent (a resumed stream's).
    """

    def __init__(self, audio: AudioQueue, max_feed: float, save_interval: float = 0.0,
                 offset: float = 0.0) -> None:
        self.audio = audio
        self.max_feed = max(1, int(max_feed * SAMPLE_RATE))
        self.save_interval = save_interval
        self.offset = offset
        self.input_done = False
        self._saved_at = 0.0

    def next(self, to_next_step: int) -> Feed | Wait | Done:
        """What to do now, given the samples the engine's next step still needs."""
        if self.audio.feedable(to_next_step, self.input_done):
            taken = self.audio.take(self.max_feed, to_next_step)
            if taken is not None:
                return Feed(*taken)
        return Done() if self.input_done and not self.audio else Wait()

    def fed(self, samples: int, events: list, position: float) -> Fed:
        """``samples`` were fed and gave ``events``; the engine has processed
        ``position`` seconds of the stream."""
        resume = self.audio.done(samples)
        save = bool(self.save_interval) and position - self._saved_at >= self.save_interval
        if save:
            self._saved_at = position
        return Fed(self.messages(events), resume, save, samples / SAMPLE_RATE,
                   self.audio.backlog)

    def messages(self, events: list) -> list[dict[str, Any]]:
        """The messages that send ``events`` (turns and the opt-in outputs)."""
        return [protocol.turn_message(event, self.offset) for event in events]


__all__ = ["Done", "Feed", "Fed", "Outbound", "Wait"]
