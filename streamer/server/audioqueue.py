"""The audio a stream has received and not yet fed to its engine, and what follows from it:
when to feed (a step's worth, on the engine's step grid), how much, and when to pause
reading because processing falls behind. No I/O: the session tells it what arrived and
what was processed, with the time, and acts on its answers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.audio import SAMPLE_RATE


@dataclass(frozen=True)
class Backpressure:
    """What to do after audio arrived: ``pause`` reading; ``warn`` the client that
    processing is ``behind`` seconds behind real time (once per episode)."""

    pause: bool = False
    warn: bool = False
    behind: float = 0.0


class AudioQueue:
    """Received, unprocessed 16 kHz audio of one stream.

    Args:
        max_pending: Seconds of unprocessed audio past which reading pauses (and, when
            the stream is behind real time by as much, a warning is due); it resumes
            once the backlog is down to half of it.
    """

    def __init__(self, max_pending: float) -> None:
        self.max_pending = max_pending
        self._chunks: list[tuple[np.ndarray, float]] = []  # (samples, arrival time)
        self.queued = 0  # samples in the queue
        self.received = 0  # samples received in all
        self.processed = 0  # samples fed to the engine
        self.first_arrival: float | None = None
        self.paused = False
        self._warned = False

    def __bool__(self) -> bool:
        return bool(self._chunks)

    @property
    def backlog(self) -> float:
        """Seconds received and not yet processed (queued or being fed)."""
        return (self.received - self.processed) / SAMPLE_RATE

    def behind(self, now: float) -> float:
        """Seconds the processing is behind real time: the wall time since the first
        audio minus the audio processed, at most the backlog (a stream sent faster than
        real time is never behind)."""
        if self.first_arrival is None:
            return 0.0
        return max(0.0, min(self.backlog,
                            now - self.first_arrival - self.processed / SAMPLE_RATE))

    def add(self, samples: np.ndarray, now: float) -> Backpressure:
        """Queue samples that arrived at ``now``; says whether reading must pause."""
        if self.first_arrival is None:
            self.first_arrival = now
        if len(samples):
            self._chunks.append((samples, now))
            self.queued += len(samples)
            self.received += len(samples)
        if self.backlog <= self.max_pending:
            return Backpressure()
        self.paused = True
        behind = self.behind(now)
        warn = behind > self.max_pending and not self._warned
        self._warned = self._warned or warn
        return Backpressure(pause=True, warn=warn, behind=behind)

    def feedable(self, to_next_step: int, input_done: bool = False) -> bool:
        """Whether to feed now: the queue completes the engine's next step (it decides
        nothing before), or the input is over, or reading is paused (all must go)."""
        return bool(self._chunks) and (input_done or self.paused or self.queued >= to_next_step)

    def take(self, max_samples: int, to_next_step: int) -> tuple[np.ndarray, float] | None:
        """Up to ``max_samples`` queued samples, and the arrival time of the frame that
        completed the engine's next step among them (when they became worth feeding)."""
        if not self._chunks:
            return None
        parts, size, ready_at, arrived = [], 0, None, 0.0
        while self._chunks and size < max_samples:
            samples, arrived = self._chunks[0]
            room = max_samples - size
            if len(samples) > room:
                self._chunks[0] = (samples[room:], arrived)
                samples = samples[:room]
            else:
                self._chunks.pop(0)
            parts.append(samples)
            size += len(samples)
            if ready_at is None and size >= to_next_step:
                ready_at = arrived
        self.queued -= size
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), (
            arrived if ready_at is None else ready_at)

    def done(self, samples: int) -> bool:
        """``samples`` were processed; True when reading may go on: the backlog is down
        to half the limit (and a later episode of falling behind warns again)."""
        self.processed += samples
        if self.backlog > self.max_pending / 2:
            return False
        self._warned = self.paused = False
        return True


__all__ = ["AudioQueue", "Backpressure"]
