"""Front end for a segmentation model plus an embedding model (the pyannote recipe).

The segmentation model gives per-frame activations of a few local speakers in the buffer;
each active local speaker gets one embedding of the whole buffer, weighted towards the
frames where it speaks alone (overlap-aware weights).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from streamer.models.base import BufferAnalysis, EmbeddingModel, SegmentationModel
from streamer.models.calls import ModelCall, Models, Steps


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
    #: A buffer's analysis does not depend on the stream's speakers (the segmentation
    #: model tells local speakers apart itself): another pass over the same audio may
    #: replay the analyses of the first (see streamer.engine.run_passes).
    analysis_uses_speakers = False

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
        # Pitch is left out unless the embedding model says otherwise: with a trained
        # segmentation model's local speakers (overlap included) it split real speakers
        # that CAM++ keeps together (see the README).
        self.default_pitch_weight = float(getattr(embedding, "pitch_weight", 0.0))
        self.default_speech_threshold = speech_threshold
        self.sources = dict(sources or {})
        #: Streams reuse the segmentation's first-layer work of their previous step when
        #: the model offers it (pyannote models on CPU); same outputs, less compute.
        self.reuse_responses = bool(getattr(segmentation, "reuses_filter_responses", False))

    @property
    def models(self) -> Models:
        models: dict[str, Callable[..., np.ndarray]] = {
            "segmentation": self.segmentation, "embedding": self.embedding}
        if self.reuse_responses:
            models["segmentation_responses"] = self.segmentation.from_responses  # type: ignore[attr-defined]
        return models

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

    def _segmentation_call(self, chunk: np.ndarray, start: float) -> ModelCall:
        if self.responses is None:
            return ModelCall("segmentation", (chunk[None],))
        inputs = self.responses.update(chunk, round(start * self.frontend.sample_rate))
        return ModelCall("segmentation_responses", tuple(x[None] for x in inputs))

    def analyze(self, buffer: np.ndarray, start: float, speakers: np.ndarray | None = None
                ) -> Steps[BufferAnalysis]:
        # The segmentation model tells local speakers apart itself: known speakers unused.
        f = self.frontend
        chunk = np.ascontiguousarray(buffer, np.float32)[None]
        activations = np.asarray((yield self._segmentation_call(chunk[0], start)),
                                 np.float32)[0]
        count = activations.shape[1]
        embeddings = np.full((count, f.embedding.dimension), np.nan, np.float32)
        active = np.flatnonzero(activations.max(axis=0) >= self.config.tau_active)
        if len(active):
            weights = overlap_aware_weights(activations, self.config.gamma, self.config.beta)
            batch = np.repeat(chunk, len(active), axis=0)
            embeddings[active] = yield ModelCall(
                "embedding", (batch, np.ascontiguousarray(weights[:, active].T)))
        return BufferAnalysis(activations, embeddings, f.segmentation.frames)
