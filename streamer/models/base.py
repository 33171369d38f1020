"""The two small model interfaces the engine is built on, and the per-buffer front end.

Models take and return numpy ``float32`` arrays so that torch, ONNX and fake models are
interchangeable:

* :class:`SegmentationModel`: ``(batch, samples) -> (batch, frames, local_speakers)``
  activations in [0, 1], with known frame timing and chunk duration.
* :class:`EmbeddingModel`: ``(batch, samples), weights (batch, frames) -> (batch, dim)``.
  ``weights`` may have any number of frames: they are spread uniformly over the chunk.

A :class:`Frontend` turns one rolling buffer into local-speaker activations and one
embedding per local speaker (:class:`BufferAnalysis`). The engine does the rest (speaker
matching, aggregation, turns), whatever the models are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from streamer.models.calls import Models, Steps


@dataclass(frozen=True)
class FrameTiming:
    """Where the frames of a model output lie, in seconds from the chunk start.

    Frame ``i`` covers ``[start + i * step, start + i * step + duration]``.
    """

    start: float
    duration: float
    step: float

    def center(self, index: np.ndarray | int) -> np.ndarray | float:
        return self.start + self.duration / 2 + np.asarray(index) * self.step


@runtime_checkable
class SegmentationModel(Protocol):
    """``(batch, samples) -> (batch, frames, local_speakers)`` activations in [0, 1]."""

    sample_rate: int
    chunk_duration: float
    num_speakers: int
    frames: FrameTiming

    def __call__(self, waveforms: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class EmbeddingModel(Protocol):
    """``(batch, samples), weights (batch, frames) | None -> (batch, dimension)``."""

    sample_rate: int
    dimension: int

    def __call__(self, waveforms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray: ...


@dataclass
class BufferAnalysis:
    """What a front end found in one buffer.

    Attributes:
        activations: ``(frames, local_speakers)`` in [0, 1].
        embeddings: ``(local_speakers, dim)``; rows of speakers with no usable embedding
            are NaN.
        frames: Frame timing relative to the first sample of the buffer.
        speech: ``(frames,)`` speech activity in [0, 1] regardless of speaker (used to
            gate exclusive turns); ``None`` means the maximum over local speakers.
        confidence: ``(frames,)`` weight of each frame when buffers are averaged (e.g.
            low where the buffer's end cuts the context short); ``None`` means uniform.
        pitch: ``(frames,)`` voice pitch in semitones (NaN: unvoiced), from a front end
            that tracks it anyway (:class:`streamer.pitch.PitchTrack`); ``None``: the
            engine tracks it itself when it needs it.
    """

    activations: np.ndarray
    embeddings: np.ndarray
    frames: FrameTiming
    speech: np.ndarray | None = None
    confidence: np.ndarray | None = None
    pitch: np.ndarray | None = None


class FrontendStream(Protocol):
    """Per-stream state of a front end (caches, recurrent states).

    A stream whose analysis of audio depends on more than that audio (a recurrent
    state) may also have ``resume_state() -> dict`` (JSON-ready, put in the engine's
    state) and ``continue_from(resume_state, origin)``: a stream primed with the audio
    context of the stream it continues, whose sample 0 is that stream's sample
    ``origin``, then analyses it exactly as that stream did (see
    :meth:`streamer.engine.StreamingDiarizer.prime`; the embedded preset's VAD)."""

    def analyze(self, buffer: np.ndarray, start: float, speakers: np.ndarray | None = None
                ) -> Steps[BufferAnalysis]:
        """Analyse ``buffer`` (16 kHz mono float32) whose first sample is at ``start``
        seconds from stream start (negative while the buffer is left-padded).
        ``speakers`` holds the stream's speakers so far as unit-norm centroids of its
        embeddings, ``(speakers, dim)`` (``None``: none yet): a front end whose local
        speakers come from clustering may use them to keep apart voices the stream has
        already told apart (the embedded preset); one whose local speakers come from a
        segmentation model ignores them.

        Buffers arrive in time order; consecutive buffers overlap. The analysis asks for
        its model calls by yielding them (:mod:`streamer.models.calls`): run it with
        ``run_direct(stream.analyze(...), frontend.models)``."""
        ...


class Frontend(Protocol):
    """Shared, read-only models plus the recipe to analyse a buffer."""

    name: str
    sample_rate: int
    chunk_duration: float
    #: Resolution of the engine's output frames, in seconds.
    frame_step: float
    #: Tuned defaults for :class:`streamer.config.StreamConfig` fields left as ``None``.
    default_delta_new: float
    default_speech_threshold: float
    #: Similarity from which a speaker matches a voiceprint, for this embedding model.
    default_identity_threshold: float
    #: How much pitch sets voices apart next to these embeddings (``pitch_weight``).
    default_pitch_weight: float
    #: How the engine weighs the frames of overlapping buffers: "hamming" or "uniform".
    aggregation_window: str
    #: Whether the front end sees overlapped speech (the overlap-aware outputs need it).
    detects_overlap: bool
    #: Stream positions, in samples, that keep the analysis grid (VAD frames, embedding
    #: windows, output frames) of a stream started there the same as one started at 0: a
    #: resumed stream is given the audio before it from such a point.
    sample_alignment: int

    def stream(self, config: "object") -> FrontendStream: ...

    def describe(self) -> dict: ...

    @property
    def models(self) -> Models:
        """The batchable models that the streams' analyses call, by name."""
        ...


def embedding_identity(frontend: Any) -> dict[str, Any]:
    """What makes embeddings comparable: the preset, the embedding model's source (hub
    id, absolute path of a local checkpoint, or the packaged encoder) and the dimension."""
    info = frontend.describe()
    source = str(info.get("embedding", ""))
    model = getattr(frontend, "embedding", None)
    if not source.startswith(("hf:", "packaged:")) and getattr(model, "source", None):
        source = os.path.abspath(str(model.source))
    return {"preset": str(info.get("preset", getattr(frontend, "name", "?"))),
            "embedding": source, "dimension": int(info["embedding_dimension"])}
