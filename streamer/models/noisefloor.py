"""A stream's background level, to trim a voice activity detector's hangover.

Silero VAD's probability decays over a few hundred milliseconds after a voice stops, so
the background right after each phrase counts as speech: false alarm at every pause, and
longer turns than the reference's. A 32 ms chunk whose energy is within a few dB of the
stream's own background holds no speech, whatever the VAD says.

The background is measured where the VAD is sure that nobody speaks: a low percentile of
those chunks' energies (the steady noise rather than the background's louder moments),
over the latest minute of them. Until a stream has had a second of such chunks nothing is
trimmed: a stream that starts mid-speech has no background to measure yet, and one that
never pauses keeps every chunk the VAD finds. Being relative to the stream's own level,
the trim is the same for a quiet or a loud microphone; over digital silence no chunk lies
near the floor.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: VAD probability below which a chunk is surely background.
QUIET = 0.05
#: Percentile of the background chunks' energies taken as the floor (the nearest rank
#: below it).
PERCENTILE = 10
#: Background chunks kept: the latest minute's worth of 32 ms chunks.
HISTORY = 1875
#: Background chunks needed before anything is trimmed (a second's worth).
LEAST = 31
#: The floor is updated once per this many chunks, at fixed chunk indices, so that how a
#: stream's audio is cut into frames and steps does not change which chunks are trimmed.
BLOCK = 16
#: Energy of digital silence, in dB (the log of a zero mean square is not a number).
SILENCE_DB = -100.0


def chunk_energies(samples: np.ndarray, chunk: int) -> np.ndarray:
    """Mean-square energy in dB (full scale 0 dB) of each whole ``chunk`` of ``samples``."""
    count = len(samples) // chunk
    frames = np.asarray(samples[:count * chunk], np.float64).reshape(count, chunk)
    return 10.0 * np.log10(np.maximum((frames ** 2).mean(axis=1), 10.0 ** (SILENCE_DB / 10)))


class NoiseFloor:
    """The background level of one stream, fed chunk by chunk in order.

    Args:
        margin: dB above the floor below which a chunk is background; 0 trims nothing.
    """

    def __init__(self, margin: float):
        self.margin = margin
        self.history = np.zeros(0, np.float32)  # energies of the latest background chunks
        self.level: float | None = None  # the floor in force for the current block
        self.phase = 0  # chunks seen, modulo BLOCK: where the next block starts

    def trim(self, energies: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Which of the next chunks (their ``energies`` in dB and VAD ``probs``) lie within
        ``margin`` dB of the floor; the surely silent ones among them join the history."""
        quiet = np.zeros(len(energies), bool)
        start = 0
        while start < len(energies):
            if self.phase == 0:
                rank = (len(self.history) - 1) * PERCENTILE // 100
                self.level = (float(np.partition(self.history, rank)[rank])
                              if len(self.history) >= LEAST else None)
            stop = min(len(energies), start + BLOCK - self.phase)
            part, chance = energies[start:stop], probs[start:stop]
            if self.margin > 0 and self.level is not None:
                quiet[start:stop] = part < self.level + self.margin
            self.history = np.concatenate(
                [self.history, part[chance < QUIET].astype(np.float32)])[-HISTORY:]
            self.phase = (self.phase + stop - start) % BLOCK
            start = stop
        return quiet

    def state(self) -> tuple[np.ndarray, float | None, int]:
        """``(history, level, phase)``, for :meth:`restore`. The phase counts chunks from
        the start of the stream, so it holds for a resumed stream whatever its own chunk
        0 is."""
        return self.history, self.level, self.phase

    def restore(self, history: np.ndarray, level: Any, phase: Any) -> None:
        """Take over a state of :meth:`state`.

        Raises:
            ValueError: the state is not one of a noise floor."""
        if (history.ndim != 1 or len(history) > HISTORY or not np.isfinite(history).all()
                or type(phase) is not int or not 0 <= phase < BLOCK
                or not (level is None or (type(level) in (int, float)
                                          and np.isfinite(level)))):
            raise ValueError("the noise floor state does not fit")
        self.history = history.astype(np.float32)
        self.level = None if level is None else float(level)
        self.phase = phase
