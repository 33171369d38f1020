"""The opt-in outputs of a stream next to its exclusive turns: speech regions, overlapped
speech regions, and the regular (overlap-aware) diarization.

They are derived from the same committed frames as the exclusive turns, so they agree
with them: a frame is speech where it has an exclusive speaker; the regular diarization
is the exclusive one plus, where the segmentation model counts two or more active
speakers, the next most active global speakers; a frame is overlapped speech where it
is speech and the model counts two or more active speakers (even when the second voice
is not yet a known speaker, so that no regular turn can name it). Each track becomes regions with the
stream's ``min_duration_on`` / ``min_duration_off`` (see :class:`TurnBuilder`).
"""
from __future__ import annotations

import numpy as np

from streamer.events import Region, Turn, speaker_label
from streamer.turns import TurnBuilder


class RegionTracker:
    """Final :class:`Region` events of the requested ``outputs`` from committed frames."""

    def __init__(self, outputs: tuple[str, ...], resolution: float, min_on: float,
                 min_off: float):
        self.outputs = outputs
        self.resolution = resolution
        self.min_on, self.min_off = min_on, min_off
        self.reset()

    def reset(self) -> None:
        self._builders: dict[tuple[str, int], TurnBuilder] = {}
        self._ids = {kind: 0 for kind in self.outputs}
        self._frames = 0

    def push(self, labels: np.ndarray, activations: np.ndarray, count: np.ndarray
             ) -> list[Region]:
        """Add committed frames: exclusive ``labels`` (-1: no speech), global-speaker
        ``activations`` and the mean number of active local speakers ``count``."""
        if not self.outputs or not len(labels):
            return []
        tracks: dict[tuple[str, int], np.ndarray] = {}
        if "speech" in self.outputs:
            tracks["speech", 0] = labels >= 0
        if "overlap" in self.outputs:
            tracks["overlap", 0] = (labels >= 0) & (np.rint(count) >= 2)
        if "regular" in self.outputs:
            active = regular_frames(labels, activations, count)
            for speaker in np.flatnonzero(active.any(axis=0)):
                self._builder(("regular", int(speaker)))
            for key in self._builders:
                if key[0] == "regular":
                    tracks[key] = active[:, key[1]]
        events: list[tuple[tuple[str, int], Turn]] = []
        for key, track in tracks.items():
            builder = self._builder(key)
            events += [(key, turn) for turn in builder.push(np.where(track, 0, -1))]
        self._frames += len(labels)
        return self._regions(events)

    def flush(self) -> list[Region]:
        """End of stream: close every open region."""
        events = [(key, turn) for key, builder in self._builders.items()
                  for turn in builder.flush()]
        return self._regions(events)

    def cut(self) -> None:
        """Close every open region without sending it, and number regions from 0 again
        (see :meth:`TurnBuilder.cut`)."""
        self.flush()
        self._ids = {kind: 0 for kind in self.outputs}

    def _builder(self, key: tuple[str, int]) -> TurnBuilder:
        builder = self._builders.get(key)
        if builder is None:
            builder = TurnBuilder(self.resolution, self.min_on, self.min_off, str)
            builder.frames = self._frames  # a speaker's track starts when it first speaks
            self._builders[key] = builder
        return builder

    def _regions(self, events: list[tuple[tuple[str, int], Turn]]) -> list[Region]:
        regions = []
        for (kind, speaker), turn in sorted(events, key=lambda e: (e[1].start, e[0])):
            regions.append(Region(kind, self._ids[kind], turn.start, turn.end,
                                  speaker_label(speaker) if kind == "regular" else None))
            self._ids[kind] += 1
        return regions


def regular_frames(labels: np.ndarray, activations: np.ndarray, count: np.ndarray
                   ) -> np.ndarray:
    """``(frames, speakers)`` booleans: each frame's exclusive speaker, plus the next most
    active speakers up to the rounded speaker ``count`` (speakers with no activation in
    the frame are never added)."""
    frames, speakers = activations.shape
    active = np.zeros((frames, speakers), bool)
    speaking = np.flatnonzero(labels >= 0)
    active[speaking, labels[speaking]] = True
    need = np.where(labels >= 0, np.rint(count).astype(int) - 1, 0)
    order = np.argsort(-activations, axis=1, kind="stable")
    for rank in range(min(speakers, int(need.max(initial=0)) + 1)):
        candidate = order[:, rank]
        add = (need > 0) & (candidate != labels) & (
            activations[np.arange(frames), candidate] > 0)
        active[np.flatnonzero(add), candidate[add]] = True
        need -= add
    return active


__all__ = ["RegionTracker", "regular_frames"]
