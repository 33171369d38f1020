"""Silero VAD, loaded from the weights inside the ``silero-vad`` PyPI package.

The packaged TorchScript model keeps its recurrent state inside the module, which would
tie one model to one stream. We call its stateless core instead (feature extractor and
convolutional encoder, then an LSTM over the chunks, then the output layer), keep the
state per stream in :class:`VadState`, and run all the chunks of a step in one call
(:meth:`SileroVad.recurrent`), which takes the steps of many streams at once.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from streamer.errors import ModelLoadError
from streamer.audio import SAMPLE_RATE
from streamer.models.calls import ModelCall, Steps, run_direct

CHUNK = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of left context the model sees with each chunk
BUCKET = 16  # a step's chunks are padded to a multiple of this many
HIDDEN = 128  # size of the recurrent states


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

    hidden: np.ndarray = field(default_factory=lambda: np.zeros((1, HIDDEN), np.float32))
    cell: np.ndarray = field(default_factory=lambda: np.zeros((1, HIDDEN), np.float32))
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
        rnn = self._core.decoder.rnn
        # The packaged decoder steps an LSTM cell chunk by chunk; the same weights in an
        # LSTM layer run all the chunks of a batch of streams in one call.
        self._lstm = nn.LSTM(rnn.input_size, rnn.hidden_size, batch_first=True)
        with torch.no_grad():
            self._lstm.weight_ih_l0.copy_(rnn.weight_ih)
            self._lstm.weight_hh_l0.copy_(rnn.weight_hh)
            self._lstm.bias_ih_l0.copy_(rnn.bias_ih)
            self._lstm.bias_hh_l0.copy_(rnn.bias_hh)
        self._lstm.eval()
        self._head = self._core.decoder.decoder

    @staticmethod
    def new_state() -> VadState:
        return VadState()

    def process(self, state: VadState, samples: np.ndarray) -> np.ndarray:
        """Feed samples; returns the probabilities of every chunk completed by them."""
        return run_direct(self.process_steps(state, samples), {"vad": self.recurrent})

    def process_steps(self, state: VadState, samples: np.ndarray) -> Steps[np.ndarray]:
        """:meth:`process` as model calls (``"vad"``: :meth:`recurrent`), so that a
        scheduler can run the chunks of many streams in one pass."""
        data = np.concatenate([state.pending, samples.astype(np.float32, copy=False)])
        count = len(data) // CHUNK
        state.pending = data[count * CHUNK:]
        if count == 0:
            return np.zeros(0, np.float32)
        chunks = data[: count * CHUNK].reshape(count, CHUNK)
        # Padded to a multiple of BUCKET chunks: the steps of streams fed alike then
        # have one shape, which is what lets a scheduler concatenate them.
        padded = -(-count // BUCKET) * BUCKET
        with_context = np.zeros((1, padded, CONTEXT + CHUNK), np.float32)
        with_context[0, :count, CONTEXT:] = chunks
        with_context[0, 0, :CONTEXT] = state.context
        if count > 1:
            with_context[0, 1:count, :CONTEXT] = chunks[:-1, -CONTEXT:]
        state.context = chunks[-1, -CONTEXT:].copy()
        probs, hidden, cell = yield ModelCall("vad", (
            with_context, np.array([count], np.int64), state.hidden, state.cell))
        state.hidden, state.cell = hidden, cell
        return np.asarray(probs[0, :count], np.float32)

    @torch.inference_mode()
    def recurrent(self, chunks: np.ndarray, lengths: np.ndarray, hidden: np.ndarray,
                  cell: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched VAD over ``chunks`` ``(batch, chunks, 576)`` (left context + chunk) of
        which each row's first ``lengths`` are real, from recurrent states ``hidden`` and
        ``cell`` ``(batch, 128)`` (zeros at a stream's start); returns the
        probabilities ``(batch, chunks)`` and each row's states after its last real
        chunk."""
        batch, steps, width = chunks.shape
        features = self._core.encoder(self._core.run_extractors(
            torch.from_numpy(np.ascontiguousarray(chunks, np.float32)).reshape(-1, width)))
        features = features.squeeze(-1).reshape(batch, steps, -1)
        size = self._lstm.hidden_size
        h0 = torch.from_numpy(np.ascontiguousarray(hidden, np.float32))[None]
        c0 = torch.from_numpy(np.ascontiguousarray(cell, np.float32))[None]
        packed = nn.utils.rnn.pack_padded_sequence(
            features, torch.as_tensor(lengths, dtype=torch.int64).reshape(-1),
            batch_first=True, enforce_sorted=False)
        outputs, (h, c) = self._lstm(packed, (h0, c0))
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True,
                                                      total_length=steps)
        probs = self._head(outputs.reshape(batch * steps, size, 1)).squeeze(1).mean(-1)
        return (probs.reshape(batch, steps).numpy().astype(np.float32), h[0].numpy(),
                c[0].numpy())
