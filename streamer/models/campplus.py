"""CAM++ speaker encoder (3D-Speaker's D-TDNN with context-aware masking).

The network is written here; its weights ship inside this package
(``weights/campplus_sv_zh_en_16k_common_advanced.npz``): the 3D-Speaker release
``speech_campplus_sv_zh_en_16k-common_advanced`` (Apache 2.0, see ``weights/NOTICE``),
trained on some 200 000 Chinese and English speakers, stored in float16 (embeddings within
1e-5 cosine of the float32 release). A NumPy archive holds only arrays: loading it runs no
code (``allow_pickle=False``). A ``.pt`` state dict of the same network loads too, with
``torch.load(weights_only=True)``.

Input: 80 Kaldi log mel bands (25 ms Povey window, 10 ms hop) of 16 kHz audio, mean
normalised over the clip. Output: a 192-d embedding, compared by cosine.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamer.audio import SAMPLE_RATE
from streamer.errors import ModelLoadError

DIMENSION = 192
FEATURES = 80
#: (layers, dilation) of the three dense blocks; every layer adds GROWTH channels.
BLOCKS = ((12, 1), (24, 2), (16, 2))
GROWTH = 32
BOTTLENECK = 128
#: The masking layers pool their context over segments of this many frames.
SEGMENT = 100


class _NormRelu(nn.Module):
    def __init__(self, channels: int, affine: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=affine)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batchnorm(x)
        return F.relu(x) if self.relu else x


class _ResBlock(nn.Module):
    """2-D residual block; ``stride`` applies to the frequency axis only."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Head(nn.Module):
    """Front convolution module: (batch, features, frames) -> (batch, 32 * features/8,
    frames)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(_ResBlock(channels, 2), _ResBlock(channels, 1))
        self.layer2 = nn.Sequential(_ResBlock(channels, 2), _ResBlock(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn2(self.conv2(out)))
        return out.flatten(1, 2)


class _Tdnn(nn.Module):
    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(inputs, outputs, kernel, stride=stride,
                                padding=(kernel - 1) // 2, bias=False)
        self.nonlinear = _NormRelu(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class _ContextMask(nn.Module):
    """A dilated convolution whose output is gated by utterance- and segment-level
    context."""

    def __init__(self, channels: int, outputs: int, dilation: int) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(channels, outputs, 3, padding=dilation,
                                      dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels, channels // 2, 1)
        self.linear2 = nn.Conv1d(channels // 2, outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        segments = F.avg_pool1d(x, SEGMENT, SEGMENT, ceil_mode=True)
        segments = segments.unsqueeze(-1).expand(-1, -1, -1, SEGMENT).flatten(2)[..., :frames]
        context = x.mean(-1, keepdim=True) + segments
        gate = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return self.linear_local(x) * gate


class _DenseLayer(nn.Module):
    def __init__(self, inputs: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _NormRelu(inputs)
        self.linear1 = nn.Conv1d(inputs, BOTTLENECK, 1, bias=False)
        self.nonlinear2 = _NormRelu(BOTTLENECK)
        self.cam_layer = _ContextMask(BOTTLENECK, GROWTH, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class _DenseBlock(nn.Module):
    def __init__(self, inputs: int, layers: int, dilation: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", _DenseLayer(inputs + i * GROWTH, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.nonlinear = _NormRelu(inputs)
        self.linear = nn.Conv1d(inputs, outputs, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class _Embedding(nn.Module):
    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(inputs, DIMENSION, 1, bias=False)
        self.nonlinear = _NormRelu(DIMENSION, affine=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1))).squeeze(-1)


class CAMPPlus(nn.Module):
    """``(batch, frames, 80)`` normalised fbank -> ``(batch, 192)`` embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.head = _Head()
        channels = 32 * FEATURES // 8
        self.xvector = nn.Module()
        self.xvector.tdnn = _Tdnn(channels, BOTTLENECK, 5, stride=2)
        channels = BOTTLENECK
        for i, (layers, dilation) in enumerate(BLOCKS, 1):
            setattr(self.xvector, f"block{i}", _DenseBlock(channels, layers, dilation))
            channels += layers * GROWTH
            setattr(self.xvector, f"transit{i}", _Transit(channels, channels // 2))
            channels //= 2
        self.xvector.out_nonlinear = _NormRelu(channels)
        self.xvector.dense = _Embedding(channels * 2)

    def frames(self, fbank: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, 80)`` -> frame-level features ``(batch, 512, frames / 2)``."""
        x = self.head(fbank.transpose(1, 2))
        stages = self.xvector
        x = stages.tdnn(x)
        for i in range(1, len(BLOCKS) + 1):
            x = getattr(stages, f"transit{i}")(getattr(stages, f"block{i}")(x))
        return stages.out_nonlinear(x)

    def pool(self, frames: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of frame-level features, their statistics weighted by ``weights``
        ``(batch, frames)`` (all frames alike when ``None``)."""
        if weights is None:
            mean, std = frames.mean(dim=-1), frames.std(dim=-1)
        else:
            w = weights.unsqueeze(1)
            total = w.sum(dim=-1).clamp_min(1e-8)
            mean = (frames * w).sum(dim=-1) / total
            variance = ((frames - mean.unsqueeze(-1)).square() * w).sum(dim=-1) / total
            std = variance.clamp_min(1e-8).sqrt()
        return self.xvector.dense(torch.cat([mean, std], dim=-1))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.pool(self.frames(fbank))


def _read_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(archive[name].astype(np.float32))
                    for name in archive.files}
    return torch.load(path, map_location="cpu", weights_only=True)


def load_campplus(path: str | None = None) -> CAMPPlus:
    """CAM++ in eval mode from a weights file (default: the packaged weights): a NumPy
    archive of the state dict's arrays, or a ``.pt`` state dict."""
    if path is None:
        from streamer.models.packaged import packaged_path
        path = packaged_path("packaged:campplus")
    try:
        state = _read_state(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a load error
        raise ModelLoadError(f"cannot read CAM++ weights {path}: {error}") from None
    model = CAMPPlus()
    try:
        # batch norm's step counters are training state, not weights
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ModelLoadError(f"{path} is not a CAM++ state dict: {error}") from None
    return model.eval()


class CampPlusEmbedding:
    """CAM++ behind the pyannote front end's :class:`EmbeddingModel` interface: waveforms
    ``(batch, samples)`` and per-frame weights ``(batch, frames)`` (any frame rate: they
    are resampled onto the network's frames) -> ``(batch, 192)``. The network runs once
    per distinct chunk of the batch; each row then only pools with its own weights."""

    architecture = "CAMPPlus"
    sample_rate = SAMPLE_RATE
    dimension = DIMENSION
    #: Cosine distance from which a local speaker's chunk embedding is a new voice, and
    #: similarity from which a voiceprint names a speaker (see the README's tables).
    delta_new = 0.5
    identity_threshold = 0.5
    #: Pitch cost per unit of pitch difference (see :mod:`streamer.pitch`). Half the
    #: embedded preset's: CAM++ keeps real voices apart by itself, and at a full weight
    #: pitch split one real speaker whose pitch moves widely, while voices that CAM++
    #: holds together but that speak at clearly different pitches still come apart.
    pitch_weight = 0.5
    precision = "fp32"
    #: 16 feature frames: 8 after the network's time stride, for its statistics pooling.
    min_samples = 400 + 160 * 15

    def __init__(self, path: str | None = None, device: str = "cpu",
                 source: str | None = None) -> None:
        from streamer.models.pyannote.device import resolve_device
        from streamer.models.pyannote.fbank import KaldiFbank

        self.device = resolve_device(device)
        self.model = load_campplus(path).to(self.device)
        self.fbank = KaldiFbank(num_mel_bins=FEATURES, window_type="povey").to(self.device)
        self.source = source or path or "packaged:campplus"
        self.backend = "torch"
        self._frames: Callable[[torch.Tensor], torch.Tensor] = self.model.frames

    def use_frames(self, runner: Callable[..., torch.Tensor], backend: str) -> None:
        """Run the network's frame-level part with ``runner`` (fbank -> frames), e.g. an
        ONNX Runtime session; the filterbank and the pooling stay in torch."""
        self._frames = lambda features: runner(features.cpu().numpy()).to(self.device)
        self.backend = backend

    def describe(self) -> dict[str, Any]:
        return {"kind": "embedding", "architecture": self.architecture, "source": self.source,
                "backend": self.backend, "device": str(self.device),
                "dimension": self.dimension}

    @torch.inference_mode()
    def __call__(self, waveforms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        from streamer.models.pyannote.waveforms import as_waveforms, as_weights, distinct_rows

        batch = as_waveforms(waveforms, self.min_samples)
        pooling = None
        if weights is not None:
            pooling = torch.from_numpy(as_weights(weights, len(batch))).to(self.device)
        if not len(batch):
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique, index = distinct_rows(batch)
        signal = torch.from_numpy(np.ascontiguousarray(unique)).to(self.device)
        frames = self._frames(self.fbank(signal))
        frames = frames[torch.as_tensor(index, device=frames.device)]
        if pooling is not None:
            pooling = F.interpolate(pooling[:, None], size=frames.shape[-1], mode="linear",
                                    align_corners=False)[:, 0]
        return self.model.pool(frames, pooling).float().cpu().numpy()
