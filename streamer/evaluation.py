"""Diarization error rate and Jaccard error rate, computed exactly on segment boundaries.

Same definitions as ``pyannote.metrics``' ``DiarizationErrorRate`` (no collar) and
``JaccardErrorRate``: reference and hypothesis speakers are mapped one-to-one so as to
maximise their overlap (Hungarian algorithm), then, over the scored region (UEM):

- DER sums missed speech, false alarm and speaker confusion over time (overlapped speech
  counts once per reference speaker) and divides by the reference speech;
- JER gives each reference speaker ``1 - |ref ∩ hyp| / |ref ∪ hyp|`` with its mapped
  hypothesis speaker (1 when it has none) and averages over reference speakers, so a
  speaker who talks little weighs as much as one who talks a lot.

``skip_overlap=True`` leaves out the regions where the reference has overlapping speech.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamer.rttm import Segment, read_rttm, read_uem
from streamer.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

Piece = tuple[float, set[str], set[str]]  # duration, reference speakers, hypothesis speakers


@dataclass
class DerComponents:
    total: float = 0.0  # reference speech, in seconds
    missed: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0

    @property
    def der(self) -> float:
        error = self.missed + self.false_alarm + self.confusion
        if not self.total:  # no reference speech: pyannote.metrics gives 1.0 to any error
            return 1.0 if error else 0.0
        return error / self.total

    def add(self, other: "DerComponents") -> None:
        self.total += other.total
        self.missed += other.missed
        self.false_alarm += other.false_alarm
        self.confusion += other.confusion


@dataclass
class JerComponents:
    """Sum of the per-speaker Jaccard errors and the number of reference speakers summed.

    Adding the components of several files averages over all their reference speakers,
    as pyannote.metrics' accumulated ``JaccardErrorRate`` does.
    """

    speakers: int = 0
    error: float = 0.0

    @property
    def jer(self) -> float:
        # pyannote.metrics scores a file without reference speakers as 1.0
        return self.error / self.speakers if self.speakers else 1.0

    def add(self, other: "JerComponents") -> None:
        self.speakers += other.speakers
        self.error += other.error


def _elementary(reference: list[Segment], hypothesis: list[Segment],
                uem: list[tuple[float, float]]) -> list[Piece]:
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


def _pieces(reference: list[Segment], hypothesis: list[Segment],
            uem: list[tuple[float, float]] | None, skip_overlap: bool) -> list[Piece]:
    if uem is None:
        ends = [e for _, e, _ in reference + hypothesis]
        uem = [(0.0, max(ends, default=0.0))]
    pieces = _elementary(reference, hypothesis, uem)
    if skip_overlap:
        pieces = _without_overlap(pieces)
    return pieces


def _without_overlap(pieces: list[Piece]) -> list[Piece]:
    """The pieces where at most one reference speaker talks."""
    return [p for p in pieces if len(p[1]) < 2]


def _optimal_mapping(pieces: list[Piece]) -> dict[str, str]:
    """``{reference speaker: hypothesis speaker}`` maximising the total overlap; pairs that
    never overlap are left out, as pyannote.metrics' ``HungarianMapper`` leaves them."""
    refs = sorted({spk for _, r, _ in pieces for spk in r})
    hyps = sorted({spk for _, _, h in pieces for spk in h})
    overlap = np.zeros((len(refs), len(hyps)))
    for duration, ref, hyp in pieces:
        for r in ref:
            for h in hyp:
                overlap[refs.index(r), hyps.index(h)] += duration
    if not overlap.size:
        return {}
    rows, cols = linear_sum_assignment(-overlap)
    return {refs[r]: hyps[c] for r, c in zip(rows, cols) if overlap[r, c] > 0}


def der_components(reference: list[Segment], hypothesis: list[Segment],
                   uem: list[tuple[float, float]] | None = None,
                   skip_overlap: bool = False) -> DerComponents:
    return _der(_pieces(reference, hypothesis, uem, skip_overlap))


def _der(pieces: list[Piece]) -> DerComponents:
    mapping = {h: r for r, h in _optimal_mapping(pieces).items()}
    result = DerComponents()
    for duration, ref, hyp in pieces:
        n_ref, n_hyp = len(ref), len(hyp)
        correct = len({mapping.get(h) for h in hyp} & ref)
        result.total += duration * n_ref
        result.missed += duration * max(0, n_ref - n_hyp)
        result.false_alarm += duration * max(0, n_hyp - n_ref)
        result.confusion += duration * (min(n_ref, n_hyp) - correct)
    return result


def jer_components(reference: list[Segment], hypothesis: list[Segment],
                   uem: list[tuple[float, float]] | None = None,
                   skip_overlap: bool = False) -> JerComponents:
    return _jer(_pieces(reference, hypothesis, uem, skip_overlap))


def _jer(pieces: list[Piece]) -> JerComponents:
    mapping = _optimal_mapping(pieces)
    result = JerComponents()
    for speaker in sorted({spk for _, r, _ in pieces for spk in r}):
        result.speakers += 1
        mapped = mapping.get(speaker)
        if mapped is None:
            result.error += 1.0
            continue
        both = sum(d for d, r, h in pieces if speaker in r and mapped in h)
        either = sum(d for d, r, h in pieces if speaker in r or mapped in h)
        result.error += 1.0 - both / either
    return result


# ------------------------------------------------------------------ scores of files and sets
@dataclass
class Score:
    """Scores of one file (``speakers`` and ``reference_speakers`` set) or sums over files.

    Attributes:
        der: DER components, overlapped speech scored.
        der_no_overlap: DER components with regions of overlapped reference speech left out.
        jer: JER components.
        duration: audio seconds diarized.
        compute: seconds spent diarizing them.
        files: files scored (a file scored from several start points counts once per
            start point).
        right_count: files whose found speaker count equals the reference's.
        speakers: speakers found in the file (one file only).
        reference_speakers: speakers of the file's reference (one file only).
    """

    der: DerComponents = field(default_factory=DerComponents)
    der_no_overlap: DerComponents = field(default_factory=DerComponents)
    jer: JerComponents = field(default_factory=JerComponents)
    duration: float = 0.0
    compute: float = 0.0
    files: int = 0
    right_count: int = 0
    speakers: int | None = None
    reference_speakers: int | None = None

    @property
    def rtf(self) -> float:
        """Real-time factor: compute time over audio time."""
        return self.compute / self.duration if self.duration else 0.0

    def add(self, other: "Score") -> None:
        self.der.add(other.der)
        self.der_no_overlap.add(other.der_no_overlap)
        self.jer.add(other.jer)
        self.duration += other.duration
        self.compute += other.compute
        self.files += other.files
        self.right_count += other.right_count

    def to_dict(self) -> dict[str, Any]:
        """Rates as fractions (DER parts: of the scored reference speech, ``speech``)."""
        d, speech = self.der, self.der.total or 1.0
        result: dict[str, Any] = {
            "der": d.der, "missed": d.missed / speech, "false_alarm": d.false_alarm / speech,
            "confusion": d.confusion / speech, "der_no_overlap": self.der_no_overlap.der,
            "jer": self.jer.jer, "speech": d.total, "jer_speakers": self.jer.speakers,
            "duration": self.duration, "compute": self.compute, "rtf": self.rtf,
        }
        if self.speakers is None:
            result.update(files=self.files, right_count=self.right_count)
        else:
            result.update(speakers=self.speakers, reference_speakers=self.reference_speakers)
        return result


def score_file(reference: list[Segment], hypothesis: list[Segment],
               uem: list[tuple[float, float]] | None, duration: float,
               compute: float) -> Score:
    """All scores of one diarized file; speaker counts are over the whole file."""
    speakers = len({spk for *_, spk in hypothesis})
    reference_speakers = len({spk for *_, spk in reference})
    pieces = _pieces(reference, hypothesis, uem, skip_overlap=False)
    return Score(der=_der(pieces),
                 der_no_overlap=_der(_without_overlap(pieces)),
                 jer=_jer(pieces),
                 duration=duration, compute=compute, files=1,
                 right_count=int(speakers == reference_speakers),
                 speakers=speakers, reference_speakers=reference_speakers)


# ------------------------------------------------------------------ evaluation sets
@dataclass
class EvalSet:
    """Audio files with their reference: ``audio`` maps each file id to its path."""

    name: str
    audio: dict[str, str]
    reference: dict[str, list[Segment]]
    uem: dict[str, list[tuple[float, float]]]


def load_eval_set(directory: str, rttm: str | None = None,
                  uem: str | None = None) -> EvalSet:
    """The audio of ``directory`` whose file ids are in ``rttm``, scored on ``uem`` (none:
    whole files). Without ``rttm``, the folder's ``reference.rttm`` and, when it exists,
    its ``reference.uem``."""
    if rttm is None:
        rttm = os.path.join(directory, "reference.rttm")
        if not os.path.isfile(rttm):
            raise ValueError(f"{directory} has no reference.rttm")
        if uem is None and os.path.isfile(os.path.join(directory, "reference.uem")):
            uem = os.path.join(directory, "reference.uem")
    reference = read_rttm(rttm)
    audio = {os.path.splitext(f)[0]: os.path.join(directory, f)
             for f in sorted(os.listdir(directory))
             if os.path.splitext(f)[0] in reference
             and os.path.isfile(os.path.join(directory, f))}
    if not audio:
        raise ValueError(f"no audio file in {directory} matches a file id of {rttm}")
    missing = sorted(set(reference) - set(audio))
    if missing:
        logger.warning("%s: no audio for %s of %s", directory, ", ".join(missing), rttm)
    return EvalSet(os.path.basename(os.path.abspath(directory)), audio, reference,
                   read_uem(uem) if uem else {})


# ------------------------------------------------------------------ start points
def rotate_samples(samples: np.ndarray, shift: float,
                   sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
    """The signal rotated left by ``shift`` seconds (``samples[n:] + samples[:n]``), and
    the shift actually applied: a whole number of samples, modulo the length."""
    n = round(shift * sample_rate) % len(samples) if len(samples) else 0
    return np.concatenate([samples[n:], samples[:n]]), n / sample_rate


def _rotate_span(start: float, end: float, shift: float,
                 duration: float) -> list[tuple[float, float]]:
    start, end = max(start, 0.0), min(end, duration)
    if end <= start:
        return []
    start, end = start - shift, end - shift
    if end <= 0:
        return [(start + duration, end + duration)]
    if start >= 0:
        return [(start, end)]
    return [(start + duration, duration), (0.0, end)]  # crosses the wrap point


def rotate_segments(segments: list[Segment], shift: float, duration: float) -> list[Segment]:
    """Reference of audio rotated left by ``shift`` seconds: times move back by ``shift``
    modulo ``duration`` and a segment across the wrap point is split in two. Segments are
    clipped to the audio first, as what lies past its end cannot wrap; a zero shift
    leaves them as they are."""
    shift %= duration
    if shift == 0:
        return list(segments)
    return sorted((s, e, spk) for start, end, spk in segments
                  for s, e in _rotate_span(start, end, shift, duration))


def rotate_uem(uem: list[tuple[float, float]] | None, shift: float,
               duration: float) -> list[tuple[float, float]] | None:
    """Scored regions of rotated audio; ``None`` (no UEM) is the whole file, and stays
    ``None`` for a zero shift so that the default region is the unrotated one's."""
    shift %= duration
    if shift == 0:
        return None if uem is None else list(uem)
    uem = [(0.0, duration)] if uem is None else uem
    return sorted(span for start, end in uem
                  for span in _rotate_span(start, end, shift, duration))
