"""Aggregation of overlapping buffers onto one output frame grid.

Output frame ``j`` covers ``[j * r, (j + 1) * r]`` seconds from stream start. Each buffer
adds its per-frame global-speaker activations (nearest model frame, Hamming-weighted so
the reliable middle of a buffer counts more than its edges); a frame's value is the
weighted mean over every buffer that covered it.
"""
from __future__ import annotations

import numpy as np

from streamer.models.base import FrameTiming


class Aggregator:
    def __init__(self, resolution: float, speakers: int, window: str = "hamming"):
        self.resolution = resolution
        self.speakers = speakers
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.first = 0  # absolute index of the first output frame not yet committed
        self._act = np.zeros((0, self.speakers), np.float64)
        self._speech = np.zeros(0, np.float64)
        self._weight = np.zeros(0, np.float64)

    @property
    def available(self) -> int:
        """Absolute index just past the last frame any buffer has covered."""
        return self.first + len(self._weight)

    def add(self, activations: np.ndarray, speech: np.ndarray, timing: FrameTiming,
            start: float, confidence: np.ndarray | None = None) -> None:
        """Add one buffer whose first sample lies at ``start`` seconds; ``confidence``
        optionally weighs its frames further."""
        frames = len(speech)
        if frames == 0:
            return
        r = self.resolution
        first_center = start + float(timing.center(0))
        last_center = start + float(timing.center(frames - 1))
        lo = max(self.first, int(np.ceil((first_center - timing.step / 2) / r - 0.5)), 0)
        hi = int(np.floor((last_center + timing.step / 2) / r - 0.5)) + 1
        if hi <= lo:
            return
        self._grow(hi)
        centers = (np.arange(lo, hi) + 0.5) * r
        index = np.rint((centers - start - timing.start - timing.duration / 2) / timing.step)
        index = np.clip(index.astype(int), 0, frames - 1)
        weights = self._weights(frames)
        if confidence is not None:
            weights = weights * np.maximum(np.asarray(confidence, np.float64), 1e-3)
        weights = weights[index]
        rows = slice(lo - self.first, hi - self.first)
        self._act[rows] += weights[:, None] * activations[index]
        self._speech[rows] += weights * speech[index]
        self._weight[rows] += weights

    def peek(self, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean activations and speech of frames ``first .. end`` (not removed)."""
        count = max(0, min(end, self.available) - self.first)
        weight = np.maximum(self._weight[:count], 1e-12)[:, None]
        return self._act[:count] / weight, self._speech[:count] / weight[:, 0]

    def commit(self, end: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Remove and return ``(first_index, activations, speech)`` of the frames up to
        ``end`` that some buffer covered; frames up to ``end`` that none covered are
        committed too (a later buffer no longer adds to them)."""
        start = self.first
        activations, speech = self.peek(end)
        count = len(speech)
        self._act = self._act[count:]
        self._speech = self._speech[count:]
        self._weight = self._weight[count:]
        self.first = max(start + count, end)
        return start, activations, speech

    def _grow(self, end: int) -> None:
        missing = end - self.available
        if missing > 0:
            self._act = np.concatenate([self._act, np.zeros((missing, self.speakers))])
            self._speech = np.concatenate([self._speech, np.zeros(missing)])
            self._weight = np.concatenate([self._weight, np.zeros(missing)])

    def _weights(self, frames: int) -> np.ndarray:
        if self.window == "hamming" and frames > 2:
            return np.maximum(np.hamming(frames), 0.08)
        return np.ones(frames)
