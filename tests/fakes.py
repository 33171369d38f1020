"""Fake models for fast tests: a 300 Hz tone is one speaker, a 700 Hz tone another.

They go through the same front end as the pyannote models
(:class:`streamer.models.frontend.SegmentationEmbeddingFrontend`), so the engine's whole
path (local speakers, constrained matching, aggregation, turns) is exercised.
"""
from __future__ import annotations

import numpy as np

from streamer.models.base import FrameTiming
from streamer.models.frontend import SegmentationEmbeddingFrontend

SAMPLE_RATE = 16000
FRAME = 320  # 20 ms
TONES = (300.0, 700.0)


def _band_energies(waveform: np.ndarray) -> np.ndarray:
    """``(samples,)`` -> ``(frames, 2)`` magnitude of the two tones per 20 ms frame."""
    frames = len(waveform) // FRAME
    blocks = waveform[: frames * FRAME].reshape(frames, FRAME)
    spectrum = np.abs(np.fft.rfft(blocks, axis=1)) / (FRAME / 2)
    bins = [int(round(tone * FRAME / SAMPLE_RATE)) for tone in TONES]
    return spectrum[:, bins]


class FakeSegmentation:
    """Local speaker slots in order of first appearance within the chunk (so slots do not
    match global identities: matching must come from the embeddings)."""

    sample_rate = SAMPLE_RATE
    num_speakers = 3
    frames = FrameTiming(0.0, FRAME / SAMPLE_RATE, FRAME / SAMPLE_RATE)

    def __init__(self, chunk_duration: float = 10.0):
        self.chunk_duration = chunk_duration

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        outputs = []
        for waveform in waveforms:
            active = (_band_energies(waveform) > 0.1).astype(np.float32)
            out = np.zeros((len(active), self.num_speakers), np.float32)
            first = [np.argmax(active[:, k]) if active[:, k].any() else len(active) + k
                     for k in range(2)]
            for slot, tone in enumerate(np.argsort(first)):
                out[:, slot] = active[:, tone]
            outputs.append(out)
        return np.stack(outputs)


class FakeEmbedding:
    """Weighted mean of the per-frame tone energies, as an 8-d unit vector."""

    sample_rate = SAMPLE_RATE
    dimension = 8

    def __call__(self, waveforms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        result = np.zeros((len(waveforms), self.dimension), np.float32)
        for index, waveform in enumerate(waveforms):
            energies = _band_energies(waveform)
            if weights is None:
                w = np.ones(len(energies))
            else:
                positions = np.linspace(0, weights.shape[1] - 1, len(energies))
                w = np.interp(positions, np.arange(weights.shape[1]), weights[index])
            vector = (w[:, None] * energies).sum(axis=0)
            result[index, :2] = vector
            result[index, 2] = 1e-3
        return result / np.linalg.norm(result, axis=1, keepdims=True)


def fake_frontend(chunk_duration: float = 10.0) -> SegmentationEmbeddingFrontend:
    return SegmentationEmbeddingFrontend(FakeSegmentation(chunk_duration), FakeEmbedding(),
                                         name="fake", delta_new=0.5, speech_threshold=0.5)


def tone_conversation(segments: list[tuple[float | None, float]],
                      sr: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    """Audio from ``[(frequency or None for silence, seconds), ...]``."""
    pieces = []
    for frequency, seconds in segments:
        n = int(round(seconds * sr))
        if frequency is None:
            pieces.append(np.zeros(n, np.float32))
        else:
            t = np.arange(n) / sr
            pieces.append((amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
