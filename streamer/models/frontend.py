"""Front end for a segmentation model plus an embedding model (the pyannote recipe).

The segmentation model gives per-frame activations of a few local speakers in the buffer;
each active local speaker gets one embedding of the whole buffer, weighted towards the
frames where it speaks alone (overlap-aware weights).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from streamer.models.base import BufferAnalysis, EmbeddingModel, SegmentationModel


def overlap_aware_weights(activations: np.ndarray, gamma: float, beta: float) -> np.ndarray:
    """``(frames, speakers)`` -> weights that favour frames where one speaker dominates."""
    scaled = beta * activations
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    soft = np.exp(scaled)
    soft /= soft.sum(axis=1, keepdims=True)
    weights = (activations ** gamma) * (soft ** gamma)
    return np.maximum(weights, 1e-8).astype(np.float32)


class SegmentationEmbeddingFrontend:
    """Runs ``segmentation`` on each buffer and ``embedding`` per active local speaker."""

    #: The segmentation model activates several local speakers at once where they
    #: overlap, which the overlap-aware outputs need.
    detects_overlap = True
    #: Buffers are averaged with a Hamming window: a chunk's edges see less context.
    aggregation_window = "hamming"
    def __init__(self, segmentation: SegmentationModel, embedding: EmbeddingModel,
                 name: str = "pyannote", delta_new: float | None = None,
                 speech_threshold: float = 0.5, sources: dict[str, str] | None = None):
        if segmentation.sample_rate != embedding.sample_rate:
            raise ValueError("segmentation and embedding models must share one sample rate")
        self.name = name
        self.segmentation = segmentation
        self.embedding = embedding
        self.sample_rate = segmentation.sample_rate
        self.chunk_duration = float(segmentation.chunk_duration)
        self.frame_step = float(segmentation.frames.step)
        #: Segmentation and embeddings look at each buffer alone, and the aggregator
        #: places their frames on the stream's own grid: any start point keeps it.
        self.sample_alignment = 1
        # An embedding model may carry distances calibrated for it (CAM++ does). Otherwise
        # new-speaker distance 1.0, and an identity threshold that is not calibrated for
        # pyannote embeddings here (no trained weights to calibrate on): cosine similarity
        # of a voice with itself, well above that of two voices.
        self.default_delta_new = (delta_new if delta_new is not None
                                  else getattr(embedding, "delta_new", 1.0))
        self.default_identity_threshold = float(getattr(embedding, "identity_threshold", 0.5))
        self.default_speech_threshold = speech_threshold
        self.sources = dict(sources or {})
        self._segment: Callable[..., np.ndarray] = segmentation
        self._embed: Callable[..., np.ndarray] = embedding
        #: Streams reuse the segmentation's first-layer work of their previous step when
        #: the model offers it (pyannote models on CPU); same outputs, less compute.
        self.reuse_responses = bool(getattr(segmentation, "reuses_filter_responses", False))
        self._segment_responses: Callable[..., np.ndarray] | None = (
            segmentation.from_responses if self.reuse_responses else None)  # type: ignore[attr-defined]

    def map_models(self, wrapper: Callable[[str, Callable], Callable]) -> None:
        """Wrap the batchable model calls (e.g. for cross-stream micro-batching)."""
        self._segment = wrapper("segmentation", self._segment)
        self._embed = wrapper("embedding", self._embed)
        if self._segment_responses is not None:
            self._segment_responses = wrapper("segmentation", self._segment_responses)

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.name,
            "segmentation": self.sources.get("segmentation", type(self.segmentation).__name__),
            "embedding": self.sources.get("embedding", type(self.embedding).__name__),
            "sample_rate": self.sample_rate,
            "chunk_duration": self.chunk_duration,
            "frame_step": self.frame_step,
            "local_speakers": int(self.segmentation.num_speakers),
            "embedding_dimension": int(self.embedding.dimension),
            "embedding_precision": str(getattr(self.embedding, "precision", "fp32")),
            "reuses_filterbank": self.reuse_responses,
        }

    def stream(self, config: Any) -> "SegmentationEmbeddingStream":
        return SegmentationEmbeddingStream(self, config)


class SegmentationEmbeddingStream:
    """Per-stream state of the pyannote front end (the segmentation's filter-response
    cache, where the model offers one)."""

    def __init__(self, frontend: SegmentationEmbeddingFrontend, config: Any):
        self.frontend = frontend
        self.config = config
        self.responses = (frontend.segmentation.response_cache()  # type: ignore[attr-defined]
                          if frontend.reuse_responses else None)

    def _activations(self, chunk: np.ndarray, start: float) -> np.ndarray:
        f = self.frontend
        if self.responses is None:
            return np.asarray(f._segment(chunk[None]), np.float32)[0]
        inputs = self.responses.update(chunk, round(start * f.sample_rate))
        return np.asarray(f._segment_responses(*(x[None] for x in inputs)),  # type: ignore[misc]
                          np.float32)[0]

    def analyze(self, buffer: np.ndarray, start: float) -> BufferAnalysis:
        f = self.frontend
        chunk = np.ascontiguousarray(buffer, np.float32)[None]
        activations = self._activations(chunk[0], start)
        count = activations.shape[1]
        embeddings = np.full((count, f.embedding.dimension), np.nan, np.float32)
        active = np.flatnonzero(activations.max(axis=0) >= self.config.tau_active)
        if len(active):
            weights = overlap_aware_weights(activations, self.config.gamma, self.config.beta)
            batch = np.repeat(chunk, len(active), axis=0)
            embeddings[active] = f._embed(batch, np.ascontiguousarray(weights[:, active].T))
        return BufferAnalysis(activations, embeddings, f.segmentation.frames)
