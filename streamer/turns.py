"""Exclusive speaker turns from a stream of per-frame speaker activations.

:class:`TurnPolicy` decides which frames are final (the latency cut), labels each frame
with one speaker (moving a change of speaker next to a pause to the pause,
:func:`snap_changes`), and keeps the interim view of the open turn; :class:`TurnBuilder`
turns the labels into turns.

Frames arrive in order, each labelled with one speaker index or -1 (no speech). A turn is
a stretch of one speaker: gaps of at most ``min_off`` frames between two stretches of the
same speaker are bridged (other speakers' blips inside the gap are dropped), and stretches
shorter than ``min_on`` frames are dropped. A turn is final once what follows it can no
longer extend it: another speaker spoke for ``min_on`` frames, or more than ``min_off``
frames passed without its speaker.
"""
from __future__ import annotations

import copy
import math
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


def snap_changes(labels: np.ndarray, reach: int, previous: int = -1) -> np.ndarray:
    """``labels`` (speaker per frame, -1: no speech) with each change of speaker that
    happens without a pause moved to a pause at most ``reach`` frames away, when the
    speaker on the far side of that pause is the same as next to it:

    - ``A - A B`` (a pause ``-``, then a short stretch of A before B takes over): the
      short A stretch becomes B;
    - ``A B - B``: the short B stretch before the pause becomes A.

    When both apply, the nearer pause wins. ``previous`` is the speaker of the last
    speech frame before ``labels`` (-1: none), for a pause at their start."""
    labels = np.array(labels, int)
    runs = _runs(labels, 0)
    speakers = [previous] + [speaker for speaker, _, _ in runs]  # speakers[i + 1] is run i

    def speaker(index: int) -> int | None:
        return speakers[index + 1] if -1 <= index < len(runs) else None

    for index in range(len(runs) - 1):
        a, start, change = runs[index]
        b, _, end = runs[index + 1]
        if a < 0 or b < 0 or a == b:
            continue
        late, early = change - start, end - change  # frames to the pause before / after
        back = late <= reach and speaker(index - 1) == -1 and speaker(index - 2) == a
        on = early <= reach and speaker(index + 2) == -1 and speaker(index + 3) == b
        if back and (not on or late <= early):
            labels[start:change] = b
        elif on:
            labels[change:end] = a
    return labels


def _runs(labels: np.ndarray, offset: int) -> list[tuple[int, int, int]]:
    if len(labels) == 0:
        return []
    changes = np.flatnonzero(np.diff(labels)) + 1
    starts = np.concatenate([[0], changes])
    ends = np.concatenate([changes, [len(labels)]])
    return [(int(labels[s]), offset + int(s), offset + int(e)) for s, e in zip(starts, ends)]


#: Shortest open turn shown as an interim event, in seconds: it debounces noise blips,
#: and it is also the wait a ``speaker_start`` adds after the step that first sees the
#: turn, so it is kept short (two of the embedded preset's 0.1 s frames; docs/PROTOCOL.md
#: has the trade-off).
MIN_INTERIM = 0.15


#: A change of speaker at most this far from a pause, in seconds, moves to the pause
#: (:func:`snap_changes`). People take turns at pauses more often than not, while the
#: embeddings that tell the speakers apart each see a window of audio around a frame
#: (1.5 s for the embedded preset), so where one voice takes over from another the
#: frames near the change follow the wrong voice for a while.
CHANGE_REACH = 0.5


class TurnPolicy:
    """The finalisation policy of one stream: which frames are decided, how each is
    labelled, and what the interim view of the open turn shows.

    Args:
        resolution: Seconds per output frame.
        sample_rate: Samples per second of the stream.
        latency: Seconds of audio after a frame before it is final.
        speech_threshold: Speech activity from which a frame is speech.
        min_on, min_off: The turn builder's shortest turn and longest bridged gap.
        label: Speaker index -> label.
    """

    def __init__(self, resolution: float, sample_rate: int, latency: float,
                 speech_threshold: float, min_on: float, min_off: float,
                 label: Callable[[int], str]):
        self.resolution = resolution
        self.sample_rate = sample_rate
        self.latency_samples = int(round(latency * sample_rate))
        self.speech_threshold = speech_threshold
        self.min_interim = max(min_on, MIN_INTERIM)
        self.reach = int(round(CHANGE_REACH / resolution))
        self.turns = TurnBuilder(resolution, min_on, min_off, label)
        self.reset()

    def reset(self) -> None:
        self.turns.reset()
        self._hold = -1  # speaker of the last committed speech frame
        self.cut_view()

    def cut(self) -> None:
        """The frames so far were decided elsewhere (a resumed stream's context): close
        the open turn without making it one, number turns from 0 again, and show
        nothing as open."""
        self.turns.cut()
        self.cut_view()

    def cut_view(self) -> None:
        """Forget the interim view (nothing is shown as open)."""
        #: The interim view of the open turn, if shown.
        self.view: Turn | None = None
        self._last_interim: Turn | None = None

    def decided_until(self, received: int, end: int, final: bool) -> int:
        """Frames that are final once ``received`` samples arrived and the step ending
        at sample ``end`` is processed: those ``latency`` before ``end`` (every received
        frame if ``final``)."""
        frames = int(math.ceil(received / self.sample_rate / self.resolution))
        if final:
            return frames
        return min(frames, int(math.floor((end - self.latency_samples) / self.sample_rate
                                          / self.resolution)))

    def decide(self, activations: np.ndarray, speech: np.ndarray, count: int,
               known: bool = True) -> np.ndarray:
        """Final labels of the first ``count`` frames of ``activations`` and ``speech``
        (see :meth:`_label`), which may run on to the newest frame: the frames after
        ``count`` are not decided, but a change of speaker next to a pause among them
        moves to that pause (:data:`CHANGE_REACH`, :func:`snap_changes`). Without
        ``known`` speakers, speech that none claims is the first speaker's, as the interim
        view shows it (:meth:`interim`): a voice too short to embed is not lost."""
        labels = snap_changes(self._label(activations, speech, self._first_hold(known)),
                              self.reach, self._hold)[:count]
        spoken = labels[labels >= 0]
        if len(spoken):
            self._hold = int(spoken[-1])
        return labels

    def _first_hold(self, known: bool) -> int:
        """The speaker of unclaimed speech before any claimed frame: the last one
        committed; before any, with no speaker known yet, the first speaker to come (so
        the first turn follows the first speech at once and is not lost), else none."""
        return 0 if self._hold < 0 and not known else self._hold

    def _label(self, activations: np.ndarray, speech: np.ndarray, hold: int) -> np.ndarray:
        """Per frame, the most active global speaker, or -1 where nobody speaks.

        Speech that no global speaker claims (e.g. a voice too short to embed) goes to
        the speaker of the previous speech frame, so it is not lost; before the first one,
        to ``hold`` (the last speaker committed), or where there is none (-1) to the first
        speaker that claims speech after it."""
        labels = np.argmax(activations, axis=1) if len(activations) else np.zeros(0, int)
        is_speech = speech >= self.speech_threshold
        unclaimed = is_speech & (activations.max(axis=1, initial=0) <= 0)
        labels[~is_speech] = -1
        if hold < 0:
            claimed = np.flatnonzero(is_speech & ~unclaimed)
            if len(claimed):
                hold = int(labels[claimed[0]])
        for index in np.flatnonzero(is_speech):
            if unclaimed[index]:
                labels[index] = hold
            else:
                hold = labels[index]
        return labels

    def interim(self, activations: np.ndarray, speech: np.ndarray, known: bool
                ) -> list[Turn]:
        """The interim view after the undecided frames (``activations``, ``speech``):
        the open turn once it lasts ``min_interim``; returned when it changed."""
        labels = snap_changes(self._label(activations, speech, self._first_hold(known)),
                              self.reach, self._hold)
        turn = self.turns.preview(labels)
        shown = turn is not None and turn.duration >= self.min_interim
        self.view = turn if shown else None
        if not shown or turn == self._last_interim:
            return []
        self._last_interim = turn
        return [turn]
