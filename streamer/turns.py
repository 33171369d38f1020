"""Exclusive speaker turns from a stream of per-frame speaker labels.

Frames arrive in order, each labelled with one speaker index or -1 (no speech). A turn is
a stretch of one speaker: gaps of at most ``min_off`` frames between two stretches of the
same speaker are bridged (other speakers' blips inside the gap are dropped), and stretches
shorter than ``min_on`` frames are dropped. A turn is final once what follows it can no
longer extend it: another speaker spoke for ``min_on`` frames, or more than ``min_off``
frames passed without its speaker.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np

from streamer.events import Turn


@dataclass
class _Run:
    speaker: int
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass
class _Open:
    speaker: int
    start: int
    end: int


class TurnBuilder:
    def __init__(self, resolution: float, min_on: float, min_off: float,
                 label: Callable[[int], str]):
        self.resolution = resolution
        self.min_on = int(round(min_on / resolution))
        self.min_off = int(round(min_off / resolution))
        self.label = label
        self.reset()

    def reset(self) -> None:
        self._open: _Open | None = None
        self._tail: list[_Run] = []
        self.next_id = 0
        self.frames = 0  # frames received so far

    def push(self, labels: np.ndarray) -> list[Turn]:
        """Add the labels of the next frames; returns the turns that became final."""
        for speaker, start, end in _runs(np.asarray(labels, int), self.frames):
            if self._tail and self._tail[-1].speaker == speaker:
                self._tail[-1].end = end
            else:
                self._tail.append(_Run(speaker, start, end))
        self.frames += len(labels)
        return self._resolve()

    def flush(self) -> list[Turn]:
        """End of stream: close the open turn; returns the turns that became final."""
        pad = max(self.min_on, self.min_off) + 1
        finals = self.push(np.full(pad, -1))
        self._open, self._tail = None, []
        self.frames -= pad
        return finals

    def cut(self) -> None:
        """Close what is open without making it a turn, and number turns from 0 again:
        the frames so far were decided elsewhere (a resumed stream's context)."""
        self.flush()
        self.next_id = 0

    def preview(self, labels: np.ndarray) -> Turn | None:
        """The open turn as it would stand after ``labels`` (state left unchanged)."""
        trial = copy.deepcopy(self)
        trial.push(labels)
        if trial._open is None:
            return None
        return trial._turn(trial._open, trial.next_id, final=False)

    def _turn(self, turn: _Open, turn_id: int, final: bool) -> Turn:
        r = self.resolution
        return Turn(turn_id, self.label(turn.speaker), turn.start * r, turn.end * r, final)

    def _resolve(self) -> list[Turn]:
        finals: list[Turn] = []
        while True:
            if self._open is None:
                if not self._open_next():
                    return finals
            closed, consumed = self._extend(self._open)
            self._tail = self._tail[consumed:]
            if not closed:
                return finals
            finals.append(self._turn(self._open, self.next_id, final=True))
            self.next_id += 1
            self._open = None

    def _open_next(self) -> bool:
        """Open a turn from the tail if a long enough stretch is there; drop blips."""
        while True:
            index = next((i for i, run in enumerate(self._tail) if run.speaker >= 0), None)
            if index is None:
                return False
            first = self._tail[index]
            candidate = _Open(first.speaker, first.start, first.end)
            self._tail = self._tail[index + 1:]
            closed, consumed = self._extend(candidate)
            if candidate.end - candidate.start >= max(self.min_on, 1):
                self._open = candidate
                return True
            if not closed:
                # Too short so far and may still grow: keep it for later.
                self._tail.insert(0, _Run(first.speaker, first.start, first.end))
                return False
            self._tail = self._tail[consumed:]  # a blip: dropped

    def _extend(self, turn: _Open) -> tuple[bool, int]:
        """Extend ``turn`` over the tail; returns (closed, runs consumed by the turn)."""
        consumed = 0
        for index, run in enumerate(self._tail):
            if run.speaker == turn.speaker:
                if run.start - turn.end <= self.min_off:
                    turn.end = max(turn.end, run.end)
                    consumed = index + 1
                    continue
                return True, consumed
            if run.speaker >= 0 and run.length >= max(self.min_on, 1):
                return True, consumed
            if run.end - turn.end > self.min_off:
                return True, consumed
        return False, consumed


def _runs(labels: np.ndarray, offset: int) -> list[tuple[int, int, int]]:
    if len(labels) == 0:
        return []
    changes = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], changes])
    ends = np.concatenate([changes, [len(labels)]])
    return [(int(labels[s]), offset + int(s), offset + int(e)) for s, e in zip(starts, ends)]
