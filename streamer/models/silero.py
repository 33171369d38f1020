"""Silero VAD, loaded from the weights inside the ``silero-vad`` PyPI package.

The packaged TorchScript model keeps its recurrent state inside the module, which would
tie one model to one stream. We call its stateless core instead (feature extractor and
convolutional encoder, then one LSTM cell step per chunk, then the output layer), keep the
state per stream in :class:`VadState`, and run the encoder of all the chunks of a step in
one batch.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from streamer.errors import ModelLoadError
from streamer.audio import SAMPLE_RATE

CHUNK = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of left context the model sees with each chunk


def packaged_weights() -> str:
    """Path of the TorchScript file shipped in the silero-vad package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise ModelLoadError("the silero-vad package is not installed: pip install silero-vad")
    path = os.path.join(os.path.dirname(spec.origin), "data", "silero_vad.jit")
    if not os.path.exists(path):
        raise ModelLoadError(f"silero-vad is installed but {path} is missing: reinstall it")
    return path


@dataclass
class VadState:
    """Per-stream state: recurrent state, left context and not-yet-processed samples."""

    hidden: torch.Tensor | None = None
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class SileroVad:
    """Speech probability for each 32 ms chunk of a 16 kHz stream."""

    frame_step = CHUNK / SAMPLE_RATE

    def __init__(self, path: str | None = None):
        path = path or packaged_weights()
        try:
            module = torch.jit.load(path, map_location="cpu")
        except Exception as error:  # noqa: BLE001 - any failure means unusable weights
            raise ModelLoadError(f"cannot load Silero VAD from {path}: {error}") from None
        module.eval()
        self._core = module._model
        self._rnn = self._core.decoder.rnn
        self._head = self._core.decoder.decoder

    @staticmethod
    def new_state() -> VadState:
        return VadState()

    @torch.inference_mode()
    def process(self, state: VadState, samples: np.ndarray) -> np.ndarray:
        """Feed samples; returns the probabilities of every chunk completed by them."""
        data = np.concatenate([state.pending, samples.astype(np.float32, copy=False)])
        count = len(data) // CHUNK
        state.pending = data[count * CHUNK:]
        if count == 0:
            return np.zeros(0, np.float32)
        chunks = data[: count * CHUNK].reshape(count, CHUNK)
        with_context = np.empty((count, CONTEXT + CHUNK), np.float32)
        with_context[:, CONTEXT:] = chunks
        with_context[0, :CONTEXT] = state.context
        if count > 1:
            with_context[1:, :CONTEXT] = chunks[:-1, -CONTEXT:]
        state.context = chunks[-1, -CONTEXT:].copy()
        features = self._core.encoder(self._core.run_extractors(torch.from_numpy(with_context)))
        features = features.squeeze(-1)
        hidden = state.hidden
        outputs = []
        for index in range(count):
            h, c = self._rnn(features[index: index + 1], hidden)
            hidden = (h, c)
            outputs.append(h)
        state.hidden = hidden
        probs = self._head(torch.cat(outputs).unsqueeze(-1)).squeeze(1).mean(-1)
        return probs.numpy().astype(np.float32)
