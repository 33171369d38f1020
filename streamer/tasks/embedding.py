"""Speaker embeddings as the embedding models' cards offer them: of a whole signal, of an
excerpt or of a sliding window; the cosine distance that compares them; and the small
JSON document (or ``.npy`` file) that keeps them.

pyannote.audio does it with ``Inference(model, window="whole")`` (``inference.crop(file,
Segment(start, end))`` for an excerpt) and ``Inference(model, window="sliding",
duration=3.0, step=1.0)``, then ``cdist(a, b, metric="cosine")``. Here the same calls work
for both presets, and every embedding is L2-normalised float32:

* pyannote preset: the embedding network over the excerpt, batch of one, no weights, as
  ``window="whole"`` does. pyannote runs any length in one pass, but the network's
  activations grow linearly with the length, so an excerpt longer than
  :data:`MAX_PASS_SECONDS` is cut into equal parts of at most that length, each embedded
  in one pass, and the raw network outputs are averaged weighted by part length before
  normalising. Both networks' heads are linear in the pooled [mean, std] statistics, so
  this pools the means nearly as one pass would (the parts' edges and their own
  normalisations, fbank mean or instance norms, differ) and approximates the standard
  deviations by their average over the parts. Excerpts up to that length are exactly one
  pass; longer ones cost the memory of one such pass, plus the signal, whatever their
  length.
* embedded preset: GE2E over the speech frames only, as resemblyzer's ``embed_utterance``
  does over a silence-trimmed signal: Silero VAD picks the speech (the preset's threshold),
  the mel frames of speech are cut into partial windows of the preset's window length
  (:data:`PARTIAL_RATE` partials per second of speech; a last partial covering less than
  :data:`MIN_COVERAGE` of a window is dropped unless it is the only one), each partial is
  embedded by :meth:`EmbeddedFrontend.embed` (quiet audio raised to -30 dBFS first), and
  the mean of the partial embeddings is normalised. The VAD and the mel spectrogram read
  the excerpt :data:`BLOCK_SECONDS` at a time and only speech frames are kept, so memory
  grows with the speech's mel frames, not with the audio's intermediate features. An
  excerpt with less speech than the preset's ``min_speech`` (the least a streaming window
  needs) is refused.

Sliding windows follow ``Inference(window="sliding")``: window ``k`` is ``[start + k * step,
start + k * step + window)``, full windows while they fit; when they leave the end of the
signal uncovered, one more window starts at the next step and stops at the end of the
signal (pyannote pads that one with zeros; here it is embedded from the audio there is, and
its segment says where it ends). A signal shorter than one window gives one window over all
of it. A window the model cannot embed (shorter than the pyannote model's minimum, or with
too little speech for the embedded preset) gives a row of NaN: rows are never skipped, so
row ``k`` always starts at ``start + k * step``.

Saved embeddings are a JSON document ``{"format": "streamer-embedding", "version": 1,
"model": {"preset", "embedding", "dimension"}, "audio", "start", "end", "embedding":
[...]}`` (sliding windows: ``"window"``, ``"step"``, ``"segments"`` and ``"embeddings"``
with ``null`` rows instead of ``"embedding"``), float32 values written exactly. ``model``
says which model made them (:func:`model_identity`): embeddings of different models are
not comparable, and :func:`same_model` says so.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from streamer.audio import SAMPLE_RATE, check_finite
from streamer.clustering import normalize
from streamer.errors import ConfigError
from streamer.models.base import embedding_identity as model_identity  # noqa: F401 - API
from streamer.models.embedded import EmbeddedFrontend
from streamer.models.ge2e import HOP as MEL_HOP
from streamer.models.ge2e import N_FFT, N_MELS, volume_gain
from streamer.models.silero import CHUNK as VAD_CHUNK

#: pyannote preset: longest excerpt the embedding network sees in one pass, seconds.
MAX_PASS_SECONDS = 60.0
#: embedded preset: GE2E partial windows per second of speech (resemblyzer's ``rate``).
PARTIAL_RATE = 1.3
#: embedded preset: least share of a window a last, shorter partial must cover to count.
MIN_COVERAGE = 0.75
#: embedded preset: audio the VAD and the mel spectrogram see at once, seconds. It bounds
#: their memory on long excerpts; the results do not depend on it.
BLOCK_SECONDS = 30.0
#: Saved embeddings: the ``format`` and ``version`` of the JSON document.
FORMAT, VERSION = "streamer-embedding", 1
#: End times this close beyond the audio are taken as its end (rounded durations).
END_TOLERANCE = 1e-3


class NotEmbeddable(ValueError):
    """The model cannot embed this audio: shorter than it needs, or too little speech.

    :func:`embed` raises it; :func:`embed_sliding` writes a NaN row instead."""


# ---------------------------------------------------------------------------- public API
def embed(frontend: Any, samples: np.ndarray, *, start: float | None = None,
          end: float | None = None) -> np.ndarray:
    """L2-normalised float32 embedding ``(dim,)`` of ``samples`` (16 kHz mono float) or
    of their excerpt ``[start, end)`` in seconds (default: from the first sample to the
    last). The excerpt is cut first and embedded alone, as ``Inference.crop`` does, so it
    equals the embedding of the sliced samples.

    ``frontend`` is the embedded preset's :class:`EmbeddedFrontend`, or anything with a
    pyannote ``embedding`` model and ``describe()``: the pyannote preset's front end, or
    :class:`EmbeddingFrontend` (the embedding model alone).

    Raises:
        ConfigError: ``start``/``end`` negative, not finite, out of order or beyond the audio.
        AudioFormatError: NaN or infinite samples.
        NotEmbeddable: an excerpt shorter than the model needs, or without enough speech.
    """
    samples = _signal(samples)
    lo, hi = excerpt_bounds(len(samples), start, end)
    return _embed_chunk(frontend, samples[lo:hi])


def embed_sliding(frontend: Any, samples: np.ndarray, *, window: float, step: float,
                  start: float | None = None,
                  end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of a sliding window over ``samples`` (or their excerpt ``[start, end)``).

    Returns ``segments`` ``(n, 2)`` float64 seconds from the start of ``samples`` and
    ``embeddings`` ``(n, dim)`` float32, L2-normalised; rows the model cannot embed are NaN
    (see the module docstring for where the windows lie).

    Raises:
        ConfigError: a bad ``window``/``step`` (not positive, step longer than the window,
            window shorter than the model needs) or bad ``start``/``end``.
        AudioFormatError: NaN or infinite samples.
    """
    check_window(window, step)
    samples = _signal(samples)
    lo, hi = excerpt_bounds(len(samples), start, end)
    width, hop = round(window * SAMPLE_RATE), max(1, round(step * SAMPLE_RATE))
    _check_window_fits(frontend, width)
    spans = window_spans(hi - lo, width, hop)
    excerpt = samples[lo:hi]
    rows = np.stack([_embed_row(frontend, excerpt[a:b]) for a, b in spans])
    return (spans + lo) / SAMPLE_RATE, rows


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Cosine distance (``1 - cos``, in [0, 2]) as ``scipy.spatial.distance.cdist(...,
    metric="cosine")``: two vectors give a float; a vector and a matrix, or two matrices
    ``(n, dim)`` and ``(m, dim)``, give the pairwise ``(n, m)`` matrix.

    Raises:
        ValueError: different dimensions, more than two axes, an empty or all-zero
            vector, NaN or infinity (drop the NaN rows of sliding windows first).
    """
    x, y = _vectors(a, "first"), _vectors(b, "second")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"cannot compare embeddings of different dimensions: "
                         f"{x.shape[1]} and {y.shape[1]}")
    distance = np.clip(1.0 - normalize(x) @ normalize(y).T, 0.0, 2.0)
    if np.ndim(a) == 1 and np.ndim(b) == 1:
        return float(distance[0, 0])
    return distance


def excerpt_bounds(num_samples: int, start: float | None,
                   end: float | None) -> tuple[int, int]:
    """Sample indices ``[lo, hi)`` of the excerpt ``[start, end)`` seconds of a signal of
    ``num_samples`` samples; ``None`` means its first / last sample.

    Raises:
        ConfigError: negative, not finite, ``start >= end``, or beyond the audio (an end
            at most :data:`END_TOLERANCE` past it is taken as the end).
    """
    duration = num_samples / SAMPLE_RATE
    first = 0.0 if start is None else _seconds(start, "start")
    last = duration if end is None else _seconds(end, "end")
    if first >= duration:
        raise ConfigError(f"start {first:g} s is beyond the end of the audio "
                          f"({duration:.3f} s)")
    if last > duration + END_TOLERANCE:
        raise ConfigError(f"end {last:g} s is beyond the end of the audio ({duration:.3f} s)")
    if first >= last:
        raise ConfigError(f"start ({first:g} s) must come before end ({last:g} s)")
    return round(first * SAMPLE_RATE), min(num_samples, round(last * SAMPLE_RATE))


def check_window(window: float, step: float) -> None:
    """Validate a sliding window and its step, in seconds (:class:`ConfigError`)."""
    for name, value in (("window", window), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    if step > window:
        raise ConfigError(f"step ({step:g} s) must not exceed window ({window:g} s): "
                          "the audio between windows would be left out")


def window_spans(num_samples: int, width: int, hop: int) -> np.ndarray:
    """``(n, 2)`` sample spans of the sliding windows over ``num_samples`` samples."""
    full = (num_samples - width) // hop + 1 if num_samples >= width else 0
    starts = np.arange(full) * hop
    spans = np.stack([starts, starts + width], axis=1)
    if full == 0 or (num_samples - width) % hop:
        spans = np.vstack([spans, [[full * hop, num_samples]]])
    return spans.astype(np.int64)


class EmbeddingFrontend:
    """A pyannote embedding model alone, as :func:`embed` takes it in place of a front end:
    embeddings need no segmentation model, so none has to be loaded or downloaded.

    Attributes:
        embedding: The embedding model (:class:`~streamer.models.base.EmbeddingModel`).
        source: Where it came from (hub id or path), as :func:`model_identity` reports it.
    """

    name = "pyannote"

    def __init__(self, embedding: Any, source: str) -> None:
        self.embedding = embedding
        self.source = source

    def describe(self) -> dict[str, Any]:
        return {"preset": self.name, "embedding": self.source,
                "embedding_dimension": int(self.embedding.dimension),
                "embedding_precision": str(getattr(self.embedding, "precision", "fp32"))}


# ---------------------------------------------------------------------------- documents
@dataclass(frozen=True)
class SavedEmbedding:
    """A saved embedding document, read back.

    Attributes:
        model: ``{"preset", "embedding", "dimension"}`` of the model that made it.
        audio: Name of the audio file, or None.
        start: Start of the embedded excerpt, seconds.
        end: End of the embedded excerpt, seconds.
        embedding: ``(dim,)`` float32 of a whole excerpt; None for sliding windows.
        segments: ``(n, 2)`` seconds of sliding windows; None for a whole excerpt.
        embeddings: ``(n, dim)`` float32 of sliding windows, NaN rows where the document
            has ``null`` (windows without an embedding); None for a whole excerpt.
    """

    model: dict[str, Any]
    audio: str | None
    start: float
    end: float
    embedding: np.ndarray | None = None
    segments: np.ndarray | None = None
    embeddings: np.ndarray | None = None


def json_floats(vector: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32."""
    return [float(str(x)) for x in np.asarray(vector, np.float32).ravel()]


def embedding_document(model: dict[str, Any], audio: str | None, start: float, end: float,
                       embedding: np.ndarray) -> dict[str, Any]:
    """The JSON document of one embedding (float32 values written exactly)."""
    return {**_header(model, audio, start, end), "embedding": json_floats(embedding)}


def sliding_document(model: dict[str, Any], audio: str | None, start: float, end: float,
                     window: float, step: float, segments: np.ndarray,
                     embeddings: np.ndarray) -> dict[str, Any]:
    """The JSON document of sliding-window embeddings; NaN rows are written ``null``."""
    return {**_header(model, audio, start, end), "window": round(window, 6),
            "step": round(step, 6),
            "segments": [[round(float(a), 6), round(float(b), 6)] for a, b in segments],
            "embeddings": [json_floats(row) if np.isfinite(row).all() else None
                           for row in embeddings]}


def _header(model: dict[str, Any], audio: str | None, start: float,
            end: float) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": dict(model),
            "audio": os.path.basename(audio) if audio else None,
            "start": round(start, 6), "end": round(end, 6)}


def read_document(path: str | os.PathLike) -> SavedEmbedding:
    """Read and check a saved embedding document.

    Raises:
        ValueError: not readable JSON, not a streamer embedding, another version, a
            model description or embedding that does not fit.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as file:
            data = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{name}: not a JSON document ({error})") from None
    except OSError as error:
        raise ValueError(f"{name}: cannot read it ({error.strerror or error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{name}: not a streamer embedding document (no \"format\": "
                         f"\"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ValueError(f"{name}: version {data.get('version')!r} is not supported "
                         f"(this streamer reads version {VERSION})")
    model = _model_of(data.get("model"), name)
    common = dict(model=model, audio=data.get("audio"), start=_number(data, "start", name),
                  end=_number(data, "end", name))
    if "segments" in data:
        rows = [[math.nan] * model["dimension"] if row is None else row
                for row in data.get("embeddings") or []]
        segments = np.asarray(data["segments"], np.float64)
        if segments.ndim != 2 or segments.shape[1:] != (2,):
            raise ValueError(f"{name}: \"segments\" must be [start, end] pairs")
        return SavedEmbedding(**common, segments=segments,
                              embeddings=_checked_rows(rows, model, name, len(segments)))
    vector = _checked_rows([data.get("embedding")], model, name, 1)[0]
    if not np.isfinite(vector).all():
        raise ValueError(f"{name}: the embedding holds NaN or infinite values")
    return SavedEmbedding(**common, embedding=vector)


def same_model(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """Whether two model identities (:func:`model_identity`) made comparable embeddings."""
    keys = ("preset", "embedding", "dimension")
    return all(first.get(key) == second.get(key) for key in keys)


def describe_model(model: dict[str, Any]) -> str:
    """A model identity in a few words, for messages."""
    return f"{model['preset']} preset, {model['embedding']}, {model['dimension']}-d"


# ---------------------------------------------------------------------------- internals
def _signal(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples)
    if array.ndim != 1 or array.dtype.kind != "f":
        raise ValueError(f"samples must be 16 kHz mono float audio (one axis), got "
                         f"{array.dtype} of shape {array.shape}")
    if not array.size:
        raise ValueError("no samples to embed")
    check_finite(array, "samples")
    return array.astype(np.float32, copy=False)


def _seconds(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value:g} s")
    return float(value)


def _embed_chunk(frontend: Any, chunk: np.ndarray) -> np.ndarray:
    if isinstance(frontend, EmbeddedFrontend):
        return _ge2e(frontend, chunk)
    model = getattr(frontend, "embedding", None)
    if model is None or not callable(model):
        raise TypeError(f"{type(frontend).__name__} has no speaker embedding model")
    return _pyannote(model, chunk)


def _embed_row(frontend: Any, chunk: np.ndarray) -> np.ndarray:
    try:
        return _embed_chunk(frontend, chunk)
    except NotEmbeddable:
        return np.full(int(frontend.describe()["embedding_dimension"]), np.nan, np.float32)


def _check_window_fits(frontend: Any, width: int) -> None:
    """Refuse windows no signal could fill enough for the model."""
    if isinstance(frontend, EmbeddedFrontend):
        need = frontend.settings.min_speech
        if width < need * SAMPLE_RATE:
            raise ConfigError(f"window must be at least {need:g} s: the embedded preset "
                              f"needs that much speech")
        return
    least = int(getattr(getattr(frontend, "embedding", None), "min_samples", 1))
    if width < least:
        raise ConfigError(f"window of {width / SAMPLE_RATE:g} s is shorter than the "
                          f"embedding model needs ({least / SAMPLE_RATE:.3f} s)")


def _normalised(vector: np.ndarray) -> np.ndarray:
    return normalize(np.asarray(vector, np.float64)).astype(np.float32)


def _pyannote(model: Any, chunk: np.ndarray) -> np.ndarray:
    """One pass of the network over ``chunk``; parts of at most :data:`MAX_PASS_SECONDS`
    averaged by length beyond that (see the module docstring)."""
    least = int(getattr(model, "min_samples", 1))
    if len(chunk) < least:
        raise NotEmbeddable(f"an excerpt of {len(chunk) / SAMPLE_RATE:.3f} s is shorter than "
                            f"the embedding model needs ({least / SAMPLE_RATE:.3f} s)")
    parts = -(-len(chunk) // round(MAX_PASS_SECONDS * SAMPLE_RATE))
    bounds = np.linspace(0, len(chunk), parts + 1).round().astype(int)
    raw = np.zeros(int(model.dimension), np.float64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        raw += (hi - lo) * np.asarray(model(chunk[None, lo:hi]), np.float64)[0]
    return _normalised(raw)


def _ge2e(frontend: EmbeddedFrontend, chunk: np.ndarray) -> np.ndarray:
    """GE2E over the speech frames of ``chunk``, as ``embed_utterance`` (module docstring)."""
    probs = _speech_probabilities(frontend, chunk)
    if not len(probs):
        raise NotEmbeddable(f"an excerpt of {len(chunk) / SAMPLE_RATE:.3f} s is shorter than "
                            f"the voice activity detector needs ({VAD_CHUNK / SAMPLE_RATE:.3f} s)")
    speech = probs >= frontend.settings.window_threshold  # the frames a stream's windows see
    seconds, need = speech.sum() * VAD_CHUNK / SAMPLE_RATE, frontend.settings.min_speech
    if seconds < need:
        found = "no speech found" if not seconds else f"only {seconds:.2f} s of speech found"
        raise NotEmbeddable(f"{found} in the excerpt: the embedded preset needs at least "
                            f"{need:g} s")
    mels = _speech_mels(frontend, chunk, speech)
    gain, size = volume_gain(chunk), frontend.max_frames
    hop = max(1, round(SAMPLE_RATE / PARTIAL_RATE / MEL_HOP))
    partials = [frontend.embed(mels[s:s + size], gain) for s in _partial_starts(len(mels),
                                                                               size, hop)]
    return _normalised(np.mean(partials, axis=0))


def _speech_probabilities(frontend: EmbeddedFrontend, chunk: np.ndarray) -> np.ndarray:
    """Silero's speech probability per VAD frame, fed :data:`BLOCK_SECONDS` at a time (one
    state throughout, so the blocks change nothing but the memory)."""
    state, block = frontend.vad.new_state(), round(BLOCK_SECONDS * SAMPLE_RATE)
    return np.concatenate([np.zeros(0, np.float32)] + [
        frontend.vad.process(state, chunk[i:i + block]) for i in range(0, len(chunk), block)])


def _speech_mels(frontend: EmbeddedFrontend, chunk: np.ndarray,
                 speech: np.ndarray) -> np.ndarray:
    """The frames of ``frontend.mel(chunk)`` whose VAD frame is speech, computed
    :data:`BLOCK_SECONDS` at a time. Mel frame ``i`` is centred on sample ``i * MEL_HOP``;
    the VAD frame holding that sample decides."""
    half, count = N_FFT // 2, 1 + len(chunk) // MEL_HOP
    per_block = round(BLOCK_SECONDS * SAMPLE_RATE) // MEL_HOP
    kept = [np.zeros((0, N_MELS), np.float32)]
    for first in range(0, count, per_block):
        last = min(first + per_block, count)
        lo, hi = first * MEL_HOP - half, (last - 1) * MEL_HOP + half
        segment = np.pad(chunk[max(lo, 0):hi], (max(0, -lo), max(0, hi - len(chunk))))
        vad_frame = np.minimum(np.arange(first, last) * MEL_HOP // VAD_CHUNK, len(speech) - 1)
        kept.append(frontend.mel.frames(segment)[speech[vad_frame]])
    return np.concatenate(kept)


def _partial_starts(count: int, size: int, hop: int) -> list[int]:
    """First frames of the partial windows over ``count`` frames: every ``hop`` frames
    until one reaches the end; that last one is dropped if it covers less than
    :data:`MIN_COVERAGE` of a window, unless it is the only one."""
    starts = list(range(0, max(count - size + hop, 1), hop))
    if len(starts) > 1 and count - starts[-1] < MIN_COVERAGE * size:
        starts.pop()
    return starts


def _vectors(value: np.ndarray, which: str) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] == 0 or array.size == 0:
        raise ValueError(f"the {which} embedding must be a vector (dim,) or a matrix "
                         f"(n, dim), got shape {array.shape}")
    matrix = array.reshape(-1, array.shape[-1])
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(f"the {which} embedding holds NaN or infinite values ({bad.sum()} of "
                         f"{len(matrix)} rows; windows without an embedding are NaN rows: "
                         "drop them first)")
    if (np.linalg.norm(matrix, axis=1) == 0).any():
        raise ValueError(f"the {which} embedding is all zeros: it has no direction")
    return matrix


def _number(data: dict[str, Any], key: str, name: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: \"{key}\" must be a number of seconds, got {value!r}")
    return float(value)


def _model_of(model: Any, name: str) -> dict[str, Any]:
    if not isinstance(model, dict) or not {"preset", "embedding", "dimension"} <= set(model) \
            or isinstance(model["dimension"], bool) or not isinstance(model["dimension"], int) \
            or model["dimension"] < 1:
        raise ValueError(f"{name}: \"model\" must give preset, embedding and a positive "
                         "dimension")
    return {"preset": str(model["preset"]), "embedding": str(model["embedding"]),
            "dimension": int(model["dimension"])}


def _checked_rows(rows: Sequence[Any], model: dict[str, Any], name: str,
                  count: int) -> np.ndarray:
    try:
        array = np.asarray(rows, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: embeddings must be lists of numbers") from None
    if array.shape != (count, model["dimension"]):
        raise ValueError(f"{name}: expected {count} embedding(s) of {model['dimension']} "
                         f"values (the model's dimension), got shape {array.shape}")
    return array.astype(np.float32)
