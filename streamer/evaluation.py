"""Diarization error rate, computed exactly on segment boundaries.

Same definition as ``pyannote.metrics.DiarizationErrorRate`` with no collar: the
hypothesis speakers are mapped one-to-one to the reference speakers so as to maximise
their overlap, then, over the scored region, missed speech, false alarm and speaker
confusion are summed over time (overlapped speech counts once per reference speaker).
``skip_overlap=True`` leaves out the regions where the reference has overlapping speech.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamer.rttm import Segment


@dataclass
class DerComponents:
    total: float = 0.0  # reference speech, in seconds
    missed: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0
    files: dict[str, "DerComponents"] = field(default_factory=dict, repr=False)

    @property
    def der(self) -> float:
        return (self.missed + self.false_alarm + self.confusion) / self.total if self.total else 0.0

    def add(self, other: "DerComponents") -> None:
        self.total += other.total
        self.missed += other.missed
        self.false_alarm += other.false_alarm
        self.confusion += other.confusion


def _elementary(reference: list[Segment], hypothesis: list[Segment],
                uem: list[tuple[float, float]]) -> list[tuple[float, set[str], set[str]]]:
    bounds = {t for s, e, _ in reference + hypothesis for t in (s, e)}
    bounds |= {t for s, e in uem for t in (s, e)}
    points = sorted(bounds)
    pieces = []
    for lo, hi in zip(points[:-1], points[1:]):
        mid = (lo + hi) / 2
        if hi <= lo or not any(s <= mid < e for s, e in uem):
            continue
        ref = {spk for s, e, spk in reference if s <= mid < e}
        hyp = {spk for s, e, spk in hypothesis if s <= mid < e}
        pieces.append((hi - lo, ref, hyp))
    return pieces


def der_components(reference: list[Segment], hypothesis: list[Segment],
                   uem: list[tuple[float, float]] | None = None,
                   skip_overlap: bool = False) -> DerComponents:
    if uem is None:
        ends = [e for _, e, _ in reference + hypothesis]
        uem = [(0.0, max(ends, default=0.0))]
    pieces = _elementary(reference, hypothesis, uem)
    if skip_overlap:
        pieces = [p for p in pieces if len(p[1]) < 2]
    refs = sorted({spk for _, r, _ in pieces for spk in r})
    hyps = sorted({spk for _, _, h in pieces for spk in h})
    overlap = np.zeros((len(refs), len(hyps)))
    for duration, ref, hyp in pieces:
        for r in ref:
            for h in hyp:
                overlap[refs.index(r), hyps.index(h)] += duration
    mapping: dict[str, str] = {}
    if overlap.size:
        rows, cols = linear_sum_assignment(-overlap)
        mapping = {hyps[c]: refs[r] for r, c in zip(rows, cols) if overlap[r, c] > 0}
    result = DerComponents()
    for duration, ref, hyp in pieces:
        n_ref, n_hyp = len(ref), len(hyp)
        correct = len({mapping.get(h) for h in hyp} & ref)
        result.total += duration * n_ref
        result.missed += duration * max(0, n_ref - n_hyp)
        result.false_alarm += duration * max(0, n_hyp - n_ref)
        result.confusion += duration * (min(n_ref, n_hyp) - correct)
    return result
