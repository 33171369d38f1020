"""GE2E speaker encoder (Resemblyzer's voice encoder), from the weights in its PyPI package.

Only ``pretrained.pt`` is used: the network (3-layer LSTM over 40 mel bands, 256-d
projection, ReLU, L2 norm) and its mel front end (librosa-compatible power mel
spectrogram, 25 ms Hann window, 10 ms hop, Slaney mel scale) are written here, so the
package's own heavy imports are never needed.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from streamer.errors import ModelLoadError
from streamer.audio import SAMPLE_RATE

N_FFT = 400
HOP = 160
N_MELS = 40
TARGET_DBFS = -30.0


def packaged_weights() -> str:
    """Path of ``pretrained.pt`` inside the installed resemblyzer package (not imported)."""
    spec = importlib.util.find_spec("resemblyzer")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError("the resemblyzer package is not installed: pip install resemblyzer")
    path = os.path.join(locations[0], "pretrained.pt")
    if not os.path.exists(path):
        raise ModelLoadError(f"resemblyzer is installed but {path} is missing: reinstall it")
    return path


def slaney_mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT,
                       n_mels: int = N_MELS) -> np.ndarray:
    """Mel filter bank ``(n_mels, n_fft // 2 + 1)``, Slaney scale and area normalisation."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        hz = np.asarray(hz, dtype=np.float64)
        linear = hz / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(hz >= 1000.0, log_part, linear)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        mel = np.asarray(mel, dtype=np.float64)
        linear = mel * (200.0 / 3)
        log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
        return np.where(mel >= 15.0, log_part, linear)

    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2: n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


class MelSpectrogram:
    """Power mel spectrogram of a signal, frames every 10 ms (librosa ``center=True``)."""

    def __init__(self) -> None:
        self.window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann
        self.filters = slaney_mel_filters()

    def frames(self, padded: np.ndarray) -> np.ndarray:
        """Mel frames of a signal already padded by ``N_FFT // 2`` on both sides."""
        count = 1 + (len(padded) - N_FFT) // HOP
        if count <= 0:
            return np.zeros((0, N_MELS), np.float32)
        strided = np.lib.stride_tricks.as_strided(
            padded, shape=(count, N_FFT), strides=(padded.strides[0] * HOP, padded.strides[0]))
        spectrum = np.abs(np.fft.rfft(strided * self.window, axis=1)) ** 2
        return (spectrum.astype(np.float32) @ self.filters.T).astype(np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        padded = np.pad(samples.astype(np.float32), N_FFT // 2)
        return self.frames(padded)


def volume_gain(samples: np.ndarray) -> float:
    """Gain that brings quiet audio up to -30 dBFS (never turns loud audio down)."""
    power = float(np.mean(np.square(samples, dtype=np.float64))) if len(samples) else 0.0
    if power <= 1e-10:
        return 1.0
    change = TARGET_DBFS - 10 * np.log10(power)
    return float(10 ** (change / 20)) if change > 0 else 1.0


def _project(linear: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """The LSTM's last hidden state ``(batch, 256)`` -> L2-normalised embeddings (the
    tail shared by the torch encoder and the graph exported for ONNX Runtime)."""
    embeddings = torch.relu(linear(hidden))
    return embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-8)


class VoiceEncoder(nn.Module):
    """Mel frames ``(batch, frames, 40)`` -> L2-normalised 256-d embeddings."""

    dimension = 256

    def __init__(self, path: str | None = None):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        path = path or packaged_weights()
        self.path = path
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            state = checkpoint.get("model_state", checkpoint)
            self.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity")})
        except Exception as error:  # noqa: BLE001 - any failure means unusable weights
            raise ModelLoadError(f"cannot load the GE2E voice encoder from {path}: {error}") from None
        self.eval()

    @torch.inference_mode()
    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        return _project(self.linear, hidden[-1])

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """numpy ``(batch, frames, 40)`` -> ``(batch, 256)``."""
        return self(torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32))).numpy()

    @torch.inference_mode()
    def embed_padded(self, mels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Sequences of different lengths in one batch: ``mels`` ``(batch, frames, 40)``
        holds each sequence's first ``lengths[i]`` frames (the rest is padding). Same
        result as :meth:`embed` on each sequence alone; fixed shapes let concurrent
        streams share one forward pass."""
        lengths = np.asarray(lengths).reshape(-1)
        inputs = torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32))
        if len(lengths) and (lengths == lengths[0]).all():
            # One length (a single stream's window, always): the unpacked LSTM runs on
            # oneDNN's fused kernel, faster than the packed one.
            _, (hidden, _) = self.lstm(inputs[:, :int(lengths[0])])
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                inputs, torch.as_tensor(lengths, dtype=torch.int64), batch_first=True,
                enforce_sorted=False)
            _, (hidden, _) = self.lstm(packed)
        return _project(self.linear, hidden[-1]).numpy()


class _EmbeddingGraph(nn.Module):
    """:meth:`VoiceEncoder.forward` as a module to export (mel frames -> embeddings)."""

    def __init__(self, encoder: VoiceEncoder):
        super().__init__()
        self.lstm, self.linear = encoder.lstm, encoder.linear

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        return _project(self.linear, hidden[-1])


def _take_lengths(graph: Any) -> None:
    """Gives the exported graph an input ``lengths`` (int32, one per row) that every LSTM
    layer takes as its ``sequence_lens``: each row's final state is then the one after its
    own last frame, as with a packed sequence in torch (the exporter cannot export one)."""
    import onnx

    graph.graph.input.append(onnx.helper.make_tensor_value_info(
        "lengths", onnx.TensorProto.INT32, ["batch"]))
    layers = [node for node in graph.graph.node if node.op_type == "LSTM"]
    if len(layers) != 3:
        raise ModelLoadError(f"the exported GE2E graph has {len(layers)} LSTM layers, not 3")
    for node in layers:
        while len(node.input) < 5:
            node.input.append("")
        node.input[4] = "lengths"


class OnnxVoiceEncoder:
    """:class:`VoiceEncoder`'s network run by ONNX Runtime (``backend="onnx"``), whose
    LSTM kernel takes a single stream's window in less time than torch's; exported once
    and cached like the pyannote models' graphs. Same results up to float rounding."""

    dimension = VoiceEncoder.dimension

    def __init__(self, encoder: VoiceEncoder):
        from pathlib import Path

        from streamer.models.pyannote.onnx import onnx_runner

        with open(__file__, "rb") as source:  # the graph's code: a new export on change
            version = hashlib.sha256(source.read()).hexdigest()[:12]
        example = torch.zeros(2, 150, N_MELS)
        self.runner = onnx_runner(
            _EmbeddingGraph(encoder), Path(encoder.path), f"ge2e-{version}",
            {"mels": example}, {"mels": {0: "batch", 1: "frames"}, "output": {0: "batch"}},
            torch.device("cpu"), edit=_take_lengths)

    def embed_padded(self, mels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """As :meth:`VoiceEncoder.embed_padded`."""
        lengths = np.asarray(lengths, np.int32).reshape(-1)
        if not len(lengths):
            return np.zeros((0, self.dimension), np.float32)
        # Frames past the longest row are never read: leave them out.
        mels = np.ascontiguousarray(mels[:, :max(int(lengths.max()), 1)], np.float32)
        return self.runner(mels, lengths)
