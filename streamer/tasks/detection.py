"""The pyannote/segmentation model card's tasks on whole files: voice activity detection,
overlapped speech detection, raw scores and resegmentation.

A segmentation model sees fixed chunks (5 or 10 s). As pyannote's ``Inference`` does, a
file is covered by chunks every ``step`` seconds (10 % of a chunk by default), the last
one zero-padded past the end of the file, and the chunk outputs are averaged onto one
frame grid, Hamming-weighted so that a frame counts most from the chunks it sits in the
middle of. Frames are placed where the model's receptive field sees them. Scores become
regions by hysteresis thresholding, as pyannote's ``Binarize``.

Scores per task, decided per chunk frame before aggregation (pyannote's pipelines):

* speech: multilabel models, the most active speaker; powerset models, the probability
  of any class but non-speech (pyannote decodes powerset outputs to hard labels instead,
  which leaves nothing for ``onset``/``offset`` to act on).
* overlapped speech: multilabel models, the second most active speaker; powerset models,
  the probability of the classes with two or more speakers.
* resegmentation: each chunk's local speakers mapped to the baseline's speakers (see
  :func:`resegment`).

The embedded preset has no segmentation model: its voice activity detection binarises
Silero's probabilities (one per 32 ms), with Silero's own defaults; it has no overlap or
resegmentation model.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from streamer.audio import SAMPLE_RATE, float_samples
from streamer.errors import AudioFormatError, ConfigError
from streamer.linalg import min_cost_assignment
from streamer.models.base import FrameTiming

logger = logging.getLogger(__name__)

Region = tuple[float, float]
Segment = tuple[float, float, str]  # start, end, speaker (as streamer.rttm)
#: ``(outputs (chunks, frames, classes), offsets (chunks,)) -> (chunks, frames, k)``:
#: ``offsets`` are the grid index of each chunk's first frame.
PreAggregation = Callable[[np.ndarray, np.ndarray], np.ndarray]

_FIELDS = ("onset", "offset", "min_duration_on", "min_duration_off")
TASKS = ("vad", "osd", "resegmentation")
TUNED_ON = ("ami", "dihard3", "voxconverse")
_WHAT = {"vad": "voice activity", "osd": "overlapped speech", "resegmentation": "resegmentation"}


@dataclass(frozen=True)
class Binarization:
    """How a score track becomes regions (pyannote's ``Binarize``).

    Attributes:
        onset: A region starts at the first frame whose score is above this.
        offset: An active region ends at the first frame whose score is below this.
            Below ``onset``, a dip between the two does not end a region (hysteresis).
            It may also be above ``onset`` (the card's VoxConverse resegmentation values
            are): a frame between the two then flips the state, as in pyannote.
        min_duration_on: Regions shorter than this many seconds are removed, after
            ``min_duration_off`` has filled gaps (pyannote's order).
        min_duration_off: Gaps shorter than this many seconds are filled.
    """

    onset: float = 0.5
    offset: float = 0.5
    min_duration_on: float = 0.0
    min_duration_off: float = 0.0

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
            if name in ("onset", "offset") and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value:g}")
            if name.startswith("min_") and value < 0:
                raise ConfigError(f"{name} must be 0 or more seconds, got {value:g}")

    def with_overrides(self, **values: float | None) -> "Binarization":
        """A copy with the given fields replaced (``None``: keep this one's)."""
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown binarization fields: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _card(values: dict[str, tuple[float, float, float, float]]) -> dict[str, Binarization]:
    return {name: Binarization(*fields) for name, fields in values.items()}


#: The pyannote/segmentation card's values (onset, offset, min_duration_on,
#: min_duration_off), per task and per data set they were tuned on.
PRESETS: dict[str, dict[str, Binarization]] = {
    "vad": _card({"ami": (0.684, 0.577, 0.181, 0.037),
                  "dihard3": (0.767, 0.377, 0.136, 0.067),
                  "voxconverse": (0.767, 0.713, 0.182, 0.501)}),
    "osd": _card({"ami": (0.448, 0.362, 0.116, 0.187),
                  "dihard3": (0.430, 0.320, 0.091, 0.144),
                  "voxconverse": (0.587, 0.426, 0.337, 0.112)}),
    "resegmentation": _card({"ami": (0.542, 0.527, 0.044, 0.705),
                             "dihard3": (0.592, 0.489, 0.163, 0.182),
                             "voxconverse": (0.537, 0.724, 0.410, 0.563)}),
}
#: With no data set named, multilabel models take the DIHARD 3 values: pyannote's own
#: defaults for pyannote/segmentation, and the most varied of the three sets.
DEFAULT_TUNED_ON = "dihard3"
#: Powerset models (segmentation-3.0): pyannote fixes 0.5 / 0.5 and no minimum durations.
POWERSET_DEFAULT = Binarization(0.5, 0.5, 0.0, 0.0)
#: Silero VAD: the silero-vad package's own defaults (threshold 0.5, 0.15 below it to end
#: speech, 250 ms shortest speech, 100 ms shortest silence).
SILERO_DEFAULT = Binarization(0.5, 0.35, 0.25, 0.1)


def binarization_for(task: str, detector: Any, tuned_on: str | None = None,
                     **overrides: float | None) -> Binarization:
    """The binarization of ``task`` ("vad", "osd" or "resegmentation") for ``detector``:
    the card's values tuned on ``tuned_on``, or with none named the model's default (see
    :data:`DEFAULT_TUNED_ON`, :data:`POWERSET_DEFAULT`, :data:`SILERO_DEFAULT`); explicit
    ``onset=`` ... ``min_duration_off=`` values override either."""
    if task not in PRESETS:
        raise ConfigError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    kind = detector_kind(detector)
    if kind == "embedded":
        if task != "vad":
            raise ConfigError(no_model_message(task))
        if tuned_on is not None:
            raise ConfigError("the card's tuned values are for the pyannote segmentation "
                              "model, not the embedded preset's Silero VAD: leave out the "
                              "data set and set onset/offset/min durations directly")
        base = SILERO_DEFAULT
    elif tuned_on is not None:
        if tuned_on not in PRESETS[task]:
            raise ConfigError(f"unknown data set {tuned_on!r} for tuned values: choose one "
                              f"of {', '.join(TUNED_ON)}")
        if kind == "powerset":
            logger.warning("the card's values were tuned for pyannote/segmentation "
                           "(multilabel); this model is a powerset one")
        base = PRESETS[task][tuned_on]
    else:
        base = POWERSET_DEFAULT if kind == "powerset" else PRESETS[task][DEFAULT_TUNED_ON]
    return base.with_overrides(**overrides)


def no_model_message(task: str) -> str:
    return (f"the embedded preset has no {_WHAT[task]} model (Silero VAD only detects "
            f"speech): use the pyannote preset (--preset pyannote, or --segmentation SRC)")


# ---------------------------------------------------------------------- binarization
def hysteresis(scores: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Active state of each frame: the first frame is active when above ``onset``; later,
    an inactive frame becomes active above ``onset`` and an active one inactive below
    ``offset`` (a frame both above ``onset`` and below ``offset`` flips the state)."""
    scores = np.nan_to_num(np.asarray(scores, np.float64).reshape(-1))
    count = len(scores)
    if not count:
        return np.zeros(0, bool)
    rise, fall = scores > onset, scores < offset
    sets = rise ^ fall  # frames that decide the state alone: on after ``rise``, else off
    sets[0] = True
    flips = np.cumsum(rise & fall)
    index = np.arange(count)
    last = np.maximum.accumulate(np.where(sets, index, 0))
    return rise[last] ^ ((flips - flips[last]) % 2 == 1)


def binarize(scores: np.ndarray, timing: FrameTiming,
             binarization: Binarization) -> list[Region]:
    """Regions ``[(start, end)]`` of a 1-D score track on frames ``timing``: from the
    middle of a region's first frame to the middle of the first frame after it (or of the
    last frame), gaps under ``min_duration_off`` filled, then regions under
    ``min_duration_on`` removed."""
    active = hysteresis(scores, binarization.onset, binarization.offset)
    if not active.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    starts, stops = edges[::2], np.minimum(edges[1::2], len(active) - 1)
    regions = [(float(timing.center(a)), float(timing.center(b)))
               for a, b in zip(starts, stops)]
    regions = _fill_gaps([r for r in regions if r[1] > r[0]], binarization.min_duration_off)
    return [r for r in regions if r[1] - r[0] >= binarization.min_duration_on]


def _fill_gaps(regions: list[Region], shortest: float) -> list[Region]:
    merged: list[Region] = []
    for start, end in regions:
        if merged and start - merged[-1][1] < shortest:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


# ---------------------------------------------------------------------- sliding window
@dataclass(frozen=True)
class Scores:
    """Frame scores of a whole file.

    Attributes:
        data: ``(frames, classes)`` float32.
        timing: Frame ``j`` covers ``[start + j * step, start + j * step + duration]``
            seconds from the start of the file.
        labels: One name per class.
        chunk_duration, step: The sliding window used (``None`` for Silero, which runs
            over the file as a stream).
    """

    data: np.ndarray
    timing: FrameTiming
    labels: tuple[str, ...]
    chunk_duration: float | None = None
    step: float | None = None


@dataclass(frozen=True)
class _Chunking:
    """Chunks of ``window`` samples every ``hop``; the last one covers the end of the
    signal, zero-padded (pyannote's ``Inference.slide``)."""

    window: int
    hop: int
    count: int

    @classmethod
    def over(cls, num_samples: int, window: int, hop: int) -> "_Chunking":
        full = (num_samples - window) // hop + 1 if num_samples >= window else 0
        tail = num_samples < window or (num_samples - window) % hop > 0
        return cls(window, hop, full + int(tail))

    def batches(self, samples: np.ndarray, size: int) -> Iterator[tuple[slice, np.ndarray]]:
        """``(chunk indices, (chunks, window) waveforms)``, ``size`` chunks at a time."""
        for first in range(0, self.count, size):
            indices = range(first, min(first + size, self.count))
            out = np.zeros((len(indices), self.window), np.float32)
            for row, index in enumerate(indices):
                piece = samples[index * self.hop: index * self.hop + self.window]
                out[row, :len(piece)] = piece
            yield slice(indices.start, indices.stop), out


class _OverlapAdd:
    """Window-weighted sums of chunk outputs on the file's frame grid: the running state
    of pyannote's ``Inference.aggregate``, so chunk outputs need not be kept."""

    def __init__(self, window: np.ndarray, frames: int, classes: int):
        self.window = window
        self.sum = np.zeros((frames, classes))
        self.weight = np.zeros(frames)

    def add(self, offset: int, output: np.ndarray) -> None:
        rows = slice(offset, offset + len(output))
        self.sum[rows] += self.window[:, None] * output
        self.weight[rows] += self.window

    def mean(self, rows: slice = slice(None)) -> np.ndarray:
        return self.sum[rows] / np.maximum(self.weight[rows], 1e-12)[:, None]


def _window(kind: str, frames: int) -> np.ndarray:
    if kind == "hamming":
        return np.hamming(frames)
    if kind == "uniform":
        return np.ones(frames)
    raise ConfigError(f"window must be 'hamming' or 'uniform', got {kind!r}")


class _Stitcher:
    """Keeps each output column on one voice from chunk to chunk.

    A segmentation model's local speakers come in any order in each chunk, so averaging
    slot ``k`` over chunks would mix voices (pyannote does not aggregate such outputs).
    Each chunk's slots are first permuted to best match (least mean absolute difference)
    the activations aggregated so far over the frames they share. Columns then follow
    voices as long as consecutive chunks overlap on them; they are not global speakers.
    """

    def __init__(self, window: np.ndarray, frames: int, speakers: int,
                 mapping: np.ndarray | None):
        self._seen = _OverlapAdd(window, frames, speakers)
        self._mapping = mapping

    def align(self, offset: int, activations: np.ndarray,
              raw: np.ndarray | None = None) -> np.ndarray:
        """``activations`` with their slots in the aggregate's order (or ``raw`` powerset
        outputs with their classes moved alike)."""
        rows = slice(offset, offset + len(activations))
        covered = self._seen.weight[rows] > 0
        order = np.arange(activations.shape[1])
        if covered.any():
            previous = self._seen.mean(rows)[covered]
            cost = np.abs(previous[:, :, None] - activations[covered][:, None, :]).mean(0)
            order = min_cost_assignment(cost)[1]
        self._seen.add(offset, activations[:, order])
        if raw is None or self._mapping is None:
            return activations[:, order]
        return permute_powerset(raw, order, self._mapping)


def permute_powerset(raw: np.ndarray, order: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Powerset outputs ``(frames, classes)`` with speaker ``j`` taken from speaker
    ``order[j]``: class ``{order[a], order[b]}`` becomes class ``{a, b}``."""
    index = {tuple(row): c for c, row in enumerate(np.asarray(mapping, int))}
    target = [index[tuple(row)] for row in np.asarray(mapping, int)[:, order]]
    out = np.empty_like(raw)
    out[..., target] = raw
    return out


def segmentation_scores(detector: Any, samples: Any, *, step: float | None = None,
                        batch_size: int = 32, raw: bool = False,
                        pre_aggregation: PreAggregation | None = None,
                        labels: Sequence[str] | None = None,
                        window: str = "hamming") -> Scores:
    """Slide the segmentation model over ``samples`` (16 kHz mono) and aggregate.

    Args:
        detector: A pyannote front end or its segmentation model.
        step: Seconds between chunks (default: a tenth of the model's chunk).
        batch_size: Chunks per model call; only the aggregated grid is kept.
        raw: Aggregate the network output (powerset log-probabilities) instead of
            per-speaker activations.
        pre_aggregation: Applied to each batch of chunk outputs before aggregation, as
            pyannote's ``pre_aggregation_hook`` (see :data:`PreAggregation`). Without it,
            local speakers are kept consistent across chunks first (:class:`_Stitcher`).
        labels: Class names of the hook's output.
        window: "hamming" (pyannote's inference) or "uniform" (a plain mean).
    """
    model = segmentation_model(detector)
    samples = mono_samples(samples)
    chunk = float(model.chunk_duration)
    step = check_step(step, chunk)
    timing = model_frames(model)
    rate = int(model.sample_rate)
    chunks = _Chunking.over(len(samples), round(chunk * rate), max(1, round(step * rate)))
    offsets = np.rint(np.arange(chunks.count) * chunks.hop / rate / timing.step).astype(int)
    batches = chunks.batches(samples, max(1, int(batch_size)))
    grid = _aggregate(model, batches, offsets, raw, pre_aggregation, window)
    frames = _frames_inside(timing, len(samples) / rate, len(grid.weight))
    data = grid.mean(slice(0, frames)).astype(np.float32)
    names = tuple(labels) if labels is not None else class_labels(model, raw, data.shape[1])
    if len(names) != data.shape[1]:
        raise ValueError(f"{len(names)} labels for {data.shape[1]} classes")
    return Scores(data, timing, names, chunk, step)


def _aggregate(model: Any, batches: Iterator[tuple[slice, np.ndarray]], offsets: np.ndarray,
               raw: bool, pre_aggregation: PreAggregation | None, window: str
               ) -> _OverlapAdd:
    """Run the model batch by batch and add each chunk's output to the grid."""
    mapping = powerset_mapping(model)
    grid = stitcher = None
    for chunks, waveforms in batches:
        activations, outputs = _run(model, waveforms, raw, mapping)
        if pre_aggregation is not None:
            outputs = np.asarray(pre_aggregation(outputs, offsets[chunks]), np.float64)
        if grid is None:
            weights = _window(window, outputs.shape[1])
            grid = _OverlapAdd(weights, int(offsets[-1]) + outputs.shape[1], outputs.shape[2])
            if pre_aggregation is None:
                stitcher = _Stitcher(weights, len(grid.weight), activations.shape[2],
                                     mapping if raw else None)
        for row, offset in enumerate(offsets[chunks]):
            output = outputs[row] if stitcher is None else stitcher.align(
                int(offset), activations[row], outputs[row] if raw else None)
            grid.add(int(offset), output)
    if grid is None:
        raise ValueError("no chunk to aggregate")  # not reached: a signal has one chunk
    return grid


def _run(model: Any, waveforms: np.ndarray, raw: bool,
         mapping: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-speaker activations and the output asked for, ``(chunks, frames, classes)``."""
    if raw and mapping is not None:
        output = np.asarray(model.raw(waveforms), np.float64)
        return np.asarray(model.to_multilabel(output), np.float64), output
    activations = np.asarray(model(waveforms), np.float64)
    return activations, activations


def _frames_inside(timing: FrameTiming, duration: float, available: int) -> int:
    """Grid frames whose middle lies inside the audio (at least one)."""
    inside = math.ceil((duration - timing.start - timing.duration / 2) / timing.step)
    return int(min(max(inside, 1), available))


def check_step(step: float | None, chunk: float) -> float:
    if step is None:
        return 0.1 * chunk
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) \
            or not 0 < step <= chunk:
        raise ConfigError(f"step must be more than 0 and at most the model's chunk "
                          f"({chunk:g} s), got {step!r}")
    return float(step)


def mono_samples(samples: Any) -> np.ndarray:
    """16 kHz mono float samples (int PCM scaled), refused when empty or not 1-D."""
    array = float_samples(samples)
    if array.ndim != 1:
        raise AudioFormatError(f"samples must be 16 kHz mono (time,), got shape {array.shape}")
    if not len(array):
        raise AudioFormatError("the signal holds no samples")
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------- models
def silero_of(detector: Any) -> Any | None:
    """The Silero VAD of the embedded preset (or ``detector`` itself if it is one)."""
    if hasattr(detector, "vad") and not hasattr(detector, "segmentation"):
        return detector.vad
    if hasattr(detector, "process") and hasattr(detector, "new_state"):
        return detector
    return None


def segmentation_model(detector: Any, task: str = "vad") -> Any:
    """The segmentation model of a pyannote front end (or ``detector`` if it is one)."""
    if silero_of(detector) is not None:
        raise ConfigError(no_model_message(task) if task != "vad" else
                          "the embedded preset has no segmentation model")
    model = getattr(detector, "segmentation", detector)
    missing = [a for a in ("chunk_duration", "frames", "sample_rate") if not hasattr(model, a)]
    if missing or not callable(model):
        raise ConfigError(f"{type(detector).__name__} is not a segmentation model or a "
                          f"front end with one")
    return model


def detector_kind(detector: Any) -> str:
    """"embedded" (Silero), "powerset" or "multilabel"."""
    if silero_of(detector) is not None:
        return "embedded"
    return "multilabel" if powerset_mapping(segmentation_model(detector)) is None \
        else "powerset"


def powerset_mapping(model: Any) -> np.ndarray | None:
    """``(classes, speakers)`` 0/1 matrix of a powerset model, else None."""
    if not getattr(model, "powerset", False):
        return None
    mapping = getattr(model, "mapping", None)
    return None if mapping is None else np.asarray(mapping)


def model_frames(model: Any) -> FrameTiming:
    """Where a chunk's output frames lie: the receptive field when the model knows it
    (as pyannote places them), else its nominal frames."""
    return getattr(model, "receptive_field", None) or model.frames


def class_labels(model: Any, raw: bool, count: int) -> tuple[str, ...]:
    speakers = list(getattr(model, "classes", None) or
                    [f"speaker#{k + 1}" for k in range(getattr(model, "num_speakers", count))])
    mapping = powerset_mapping(model)
    if raw and mapping is not None:
        return tuple("+".join(s for s, on in zip(speakers, row) if on) or "non-speech"
                     for row in mapping)
    if len(speakers) != count:
        return tuple(f"class#{k + 1}" for k in range(count))
    return tuple(speakers)


def describe(detector: Any) -> dict[str, Any]:
    describe_model = getattr(detector, "describe", None)
    return describe_model() if callable(describe_model) else {"model": type(detector).__name__}


# ---------------------------------------------------------------------- tasks
def silero_scores(vad: Any, samples: Any, block_seconds: float = 30.0) -> Scores:
    """Silero's speech probability per 32 ms frame; the file is fed as a stream, block
    by block, its last partial frame zero-padded."""
    from streamer.models.silero import CHUNK

    samples = mono_samples(samples)
    state = vad.new_state()
    block = CHUNK * max(1, round(block_seconds * SAMPLE_RATE / CHUNK))
    parts = [vad.process(state, samples[i:i + block]) for i in range(0, len(samples), block)]
    if len(samples) % CHUNK:
        parts.append(vad.process(state, np.zeros(CHUNK - len(samples) % CHUNK, np.float32)))
    step = CHUNK / SAMPLE_RATE
    data = np.concatenate(parts).astype(np.float32)[:, None]
    return Scores(data, FrameTiming(0.0, step, step), ("speech",))


def speech_scores(detector: Any, samples: Any, *, step: float | None = None,
                  batch_size: int = 32) -> Scores:
    """One "speech" score per frame (see the module's description)."""
    vad = silero_of(detector)
    if vad is not None:
        return silero_scores(vad, samples)
    model = segmentation_model(detector)
    mapping = powerset_mapping(model)
    if mapping is not None:
        hook = _powerset_share(mapping.sum(axis=1) >= 1)
    else:
        def hook(activations: np.ndarray, offsets: np.ndarray) -> np.ndarray:
            return activations.max(-1, keepdims=True)
    return segmentation_scores(model, samples, step=step, batch_size=batch_size,
                               raw=mapping is not None, pre_aggregation=hook,
                               labels=("speech",))


def _powerset_share(classes: np.ndarray) -> PreAggregation:
    """Hook: the probability of the powerset ``classes`` (from log-probabilities)."""
    def share(raw: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        return np.exp(raw)[..., classes].sum(-1, keepdims=True)
    return share


def overlap_scores(detector: Any, samples: Any, *, step: float | None = None,
                   batch_size: int = 32) -> Scores:
    """One "overlap" score per frame (see the module's description)."""
    model = segmentation_model(detector, "osd")
    mapping = powerset_mapping(model)
    if mapping is not None:
        hook = _powerset_share(mapping.sum(axis=1) >= 2)
    elif getattr(model, "num_speakers", 2) < 2:
        raise ConfigError("a model with one output speaker cannot detect overlapped speech")
    else:
        def hook(activations: np.ndarray, offsets: np.ndarray) -> np.ndarray:
            return np.partition(activations, -2, axis=-1)[..., -2:-1]
    return segmentation_scores(model, samples, step=step, batch_size=batch_size,
                               raw=mapping is not None, pre_aggregation=hook,
                               labels=("overlap",))


def file_scores(detector: Any, samples: Any, *, raw: bool = False,
                step: float | None = None, batch_size: int = 32) -> Scores:
    """What ``streamer scores`` writes: per-speaker activations (local speakers kept
    consistent across chunks), with ``raw`` the network output (powerset
    log-probabilities); for the embedded preset, Silero's speech probabilities (its raw
    output too)."""
    vad = silero_of(detector)
    if vad is not None:
        return silero_scores(vad, samples)
    return segmentation_scores(detector, samples, step=step, batch_size=batch_size, raw=raw)


def detect_speech(detector: Any, samples: Any, binarization: Binarization, *,
                  step: float | None = None, batch_size: int = 32) -> list[Region]:
    """Speech regions ``[(start, end)]`` in seconds from the start of ``samples``."""
    scores = speech_scores(detector, samples, step=step, batch_size=batch_size)
    return binarize(scores.data[:, 0], scores.timing, binarization)


def detect_overlap(detector: Any, samples: Any, binarization: Binarization, *,
                   step: float | None = None, batch_size: int = 32) -> list[Region]:
    """Overlapped speech regions ``[(start, end)]`` (pyannote front ends only)."""
    scores = overlap_scores(detector, samples, step=step, batch_size=batch_size)
    return binarize(scores.data[:, 0], scores.timing, binarization)


# ---------------------------------------------------------------------- resegmentation
class BaselineTracks:
    """A baseline diarization as per-speaker activity at any instants."""

    def __init__(self, segments: Iterable[Segment]):
        spans: dict[str, list[Region]] = {}
        for start, end, speaker in sorted(segments):
            if end > start:
                spans.setdefault(str(speaker), []).append((float(start), float(end)))
        if not spans:
            raise ConfigError("the baseline has no segments")
        #: Speakers in order of their first segment.
        self.speakers = tuple(spans)
        merged = [_fill_gaps(regions, 0.0) for regions in spans.values()]
        self._starts = [np.array([r[0] for r in m]) for m in merged]
        self._ends = [np.array([r[1] for r in m]) for m in merged]

    def active(self, times: np.ndarray) -> np.ndarray:
        """``(len(times), speakers)`` 1.0 where a speaker's segment holds the instant."""
        out = np.zeros((len(times), len(self.speakers)))
        for k, (starts, ends) in enumerate(zip(self._starts, self._ends)):
            index = np.searchsorted(starts, times, side="right") - 1
            out[:, k] = (index >= 0) & (times < ends[np.maximum(index, 0)])
        return out


def map_to_baseline(local: np.ndarray, reference: np.ndarray, onset: float) -> np.ndarray:
    """One chunk's local speakers ``(frames, local)`` as the baseline's ``(frames,
    speakers)``: the local speakers active somewhere (above ``onset``) are matched one to
    one to the baseline speakers active in the chunk, by least mean squared difference
    (Hungarian); baseline speakers left unmatched get zeros, local ones are dropped."""
    out = np.zeros((local.shape[0], reference.shape[1]))
    speaking = np.flatnonzero(local.max(axis=0) > onset)
    named = np.flatnonzero(reference.any(axis=0))
    if not len(speaking) or not len(named):
        return out
    ours, theirs = local[:, speaking], reference[:, named]
    cost = ((theirs[:, :, None] - ours[:, None, :]) ** 2).mean(axis=0)
    rows, columns = min_cost_assignment(cost)
    out[:, named[rows]] = ours[:, columns]
    return out


def resegment(detector: Any, samples: Any, baseline: Iterable[Segment],
              binarization: Binarization, *, step: float | None = None,
              batch_size: int = 32) -> list[Segment]:
    """Improve a baseline diarization ``[(start, end, speaker)]`` of ``samples``.

    pyannote's Resegmentation pipeline as the card's values were tuned with it: in each
    sliding chunk the model's local speakers are mapped to the baseline's speakers
    (:func:`map_to_baseline`), the mapped activations are averaged over every chunk
    covering a frame (uniform weights), and each speaker's track is binarised. Later
    pyannote versions decide frames by a speaker count instead, for which these values
    were not tuned. The result keeps the baseline's labels; speakers may overlap.
    """
    model = segmentation_model(detector, "resegmentation")
    tracks = BaselineTracks(baseline)
    timing = model_frames(model)

    def mapped(activations: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        frames = np.arange(activations.shape[1])
        return np.stack([map_to_baseline(chunk, tracks.active(timing.center(frames + o)),
                                         binarization.onset)
                         for chunk, o in zip(activations, offsets)])

    scores = segmentation_scores(model, samples, step=step, batch_size=batch_size,
                                 pre_aggregation=mapped, labels=tracks.speakers,
                                 window="uniform")
    segments = [(start, end, speaker) for k, speaker in enumerate(tracks.speakers)
                for start, end in binarize(scores.data[:, k], scores.timing, binarization)]
    return sorted(segments)
