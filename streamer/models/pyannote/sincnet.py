"""SincNet front end (parameterised sinc band-pass filters + two 1-D convolutions).

State-dict compatible with ``pyannote.audio.models.blocks.sincnet.SincNet``: the first
layer is the asteroid ``ParamSincFB`` filterbank (``conv1d.0.filterbank.low_hz_``,
``band_hz_``, ``window_``, ``n_``). Its filters depend only on the weights, so
:meth:`SincNet.freeze` computes them once after loading instead of on every call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streamer.audio import SAMPLE_RATE

#: (kernel, stride) of each layer after the sinc filterbank: pool, conv, pool, conv, pool.
_POOL = 3
_CONV_KERNEL = 5


class ParamSincFilterbank(nn.Module):
    """Cosine and sine sinc band-pass filters parameterised by low/band frequencies."""

    def __init__(self, num_filters: int, kernel_size: int, sample_rate: int,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0) -> None:
        super().__init__()
        if num_filters % 2 or kernel_size % 2 == 0:
            raise ValueError("num_filters must be even and kernel_size odd")
        half = kernel_size // 2
        self.num_filters = num_filters
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low_hz = min_low_hz
        self.min_band_hz = min_band_hz
        self.low_hz_ = nn.Parameter(torch.zeros(num_filters // 2, 1))
        self.band_hz_ = nn.Parameter(torch.zeros(num_filters // 2, 1))
        self.register_buffer("window_", torch.hamming_window(kernel_size, periodic=False)[:half])
        self.register_buffer(
            "n_", 2 * torch.pi * torch.arange(-half, 0.0).view(1, -1) / sample_rate)

    def filters(self) -> torch.Tensor:
        """``(num_filters, 1, kernel_size)``: cosine filters then sine filters."""
        low = self.min_low_hz + self.low_hz_.abs()
        high = torch.clamp(low + self.min_band_hz + self.band_hz_.abs(),
                           self.min_low_hz, self.sample_rate / 2)
        band = (high - low)[:, 0]
        phase_low = low @ self.n_
        phase_high = high @ self.n_
        half_n = self.n_ / 2
        cos_left = (torch.sin(phase_high) - torch.sin(phase_low)) / half_n * self.window_
        sin_left = (torch.cos(phase_low) - torch.cos(phase_high)) / half_n * self.window_
        cos = torch.cat([cos_left, 2 * band[:, None], cos_left.flip(1)], dim=1)
        sin = torch.cat([sin_left, torch.zeros_like(band[:, None]), -sin_left.flip(1)], dim=1)
        scale = 2 * band[:, None]
        bank = torch.cat([cos / scale, sin / scale], dim=0)
        return bank.view(self.num_filters, 1, self.kernel_size)


class _SincEncoder(nn.Module):
    """Holds the filterbank under the name ``filterbank`` (state-dict layout)."""

    def __init__(self, filterbank: ParamSincFilterbank) -> None:
        super().__init__()
        self.filterbank = filterbank


class SincNet(nn.Module):
    """``(batch, 1, samples) -> (batch, 60, frames)`` learnable front end."""

    def __init__(self, stride: int = 10, sample_rate: int = SAMPLE_RATE, num_filters: int = 80,
                 kernel_size: int = 251, conv_channels: tuple[int, int] = (60, 60)) -> None:
        super().__init__()
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"SincNet supports 16 kHz audio only, got {sample_rate}")
        self.stride = stride
        self.kernel_size = kernel_size
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        bank = ParamSincFilterbank(num_filters, kernel_size, sample_rate)
        self.conv1d = nn.ModuleList([
            _SincEncoder(bank),
            nn.Conv1d(num_filters, conv_channels[0], _CONV_KERNEL),
            nn.Conv1d(conv_channels[0], conv_channels[1], _CONV_KERNEL),
        ])
        self.norm1d = nn.ModuleList([
            nn.InstanceNorm1d(num_filters, affine=True),
            nn.InstanceNorm1d(conv_channels[0], affine=True),
            nn.InstanceNorm1d(conv_channels[1], affine=True),
        ])
        self.register_buffer("frozen_filters", torch.empty(0), persistent=False)
        self.out_channels = conv_channels[1]
        self.num_filters = num_filters
        #: Kernel (= stride) of the max-pool after the filterbank.
        self.first_pool = _POOL

    @property
    def kernels_and_strides(self) -> list[tuple[int, int]]:
        """(kernel, stride) of every layer, for frame-count arithmetic."""
        return [(self.kernel_size, self.stride), (_POOL, _POOL), (_CONV_KERNEL, 1),
                (_POOL, _POOL), (_CONV_KERNEL, 1), (_POOL, _POOL)]

    def num_frames(self, num_samples: int) -> int:
        frames = num_samples
        for kernel, stride in self.kernels_and_strides:
            frames = (frames - kernel) // stride + 1
        return max(frames, 0)

    def receptive_field(self) -> tuple[int, int]:
        """(size, step) in samples of one output frame."""
        size, step = 1, 1
        for kernel, stride in reversed(self.kernels_and_strides):
            size = (size - 1) * stride + kernel
        for _, stride in self.kernels_and_strides:
            step *= stride
        return size, step

    @torch.no_grad()
    def freeze(self) -> None:
        """Compute the sinc filters once (call after loading weights, for inference)."""
        self.frozen_filters = self.conv1d[0].filterbank.filters().detach().clone()

    def _filters(self) -> torch.Tensor:
        return (self.frozen_filters if self.frozen_filters.numel()
                else self.conv1d[0].filterbank.filters())

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        outputs = F.conv1d(self.wav_norm1d(waveforms), self._filters(), stride=self.stride)
        return self._after_filters(outputs.abs())

    # -- streaming: the filterbank on raw audio, normalised afterwards ---------------------
    #
    # The first layer normalises the chunk (instance norm: x -> (x - mean) * a + b with
    # a = weight / std) and convolves it with the sinc filters. Both are linear, so
    #     filters * normalised = a * (filters * x) + (b - mean * a) * sum(filters)
    # and ``filters * x`` on the raw audio does not depend on the rest of the chunk: when
    # the chunk moves by a multiple of the stride, the previous chunk's work is reused and
    # only the new frames are filtered (the costliest layer of the network). segmentation.py's
    # FilterbankCache keeps them max/min-pooled; :meth:`forward_pooled` finishes the layer.

    def filter_responses(self, audio: torch.Tensor) -> torch.Tensor:
        """Sinc filterbank applied to raw (not normalised) ``(batch, samples)`` audio:
        ``(batch, frames, filters)``."""
        return F.conv1d(audio[:, None], self._filters(), stride=self.stride).transpose(1, 2)

    def norm_statistics(self, audio: torch.Tensor) -> torch.Tensor:
        """``(batch, samples) -> (batch, 2)``: mean and 1/std of the input normalisation."""
        mean = audio.mean(dim=-1)
        variance = audio.var(dim=-1, unbiased=False)
        return torch.stack([mean, torch.rsqrt(variance + self.wav_norm1d.eps)], dim=-1)

    def forward_pooled(self, maxima: torch.Tensor, minima: torch.Tensor,
                       statistics: torch.Tensor) -> torch.Tensor:
        """Same output as :meth:`forward` from the maxima and minima of
        :meth:`filter_responses` of the raw audio over the first max-pool's windows
        ``(batch, windows, filters)``, and :meth:`norm_statistics` of the chunk.

        ``|scale * x + offset|`` is convex in ``x``: its largest value over a window is
        reached at the window's largest or smallest response.
        """
        scale = (self.wav_norm1d.weight * statistics[:, 1])[:, None, None]
        shift = self.wav_norm1d.bias - statistics[:, 0] * scale[:, 0, 0]
        offset = shift[:, None, None] * self._filters().sum(dim=(1, 2))[None, None, :]
        pooled = torch.maximum((maxima * scale + offset).abs(), (minima * scale + offset).abs())
        return self._after_pool(pooled.transpose(1, 2))

    def _after_filters(self, outputs: torch.Tensor) -> torch.Tensor:
        return self._after_pool(F.max_pool1d(outputs, _POOL, _POOL))

    def _after_pool(self, outputs: torch.Tensor) -> torch.Tensor:
        outputs = F.leaky_relu(self.norm1d[0](outputs))
        for conv, norm in zip(self.conv1d[1:], self.norm1d[1:]):
            outputs = F.leaky_relu(norm(F.max_pool1d(conv(outputs), _POOL, _POOL)))
        return outputs


def sincnet_from_state_dict(state_dict: dict[str, torch.Tensor], stride: int,
                            sample_rate: int, prefix: str = "sincnet.") -> SincNet:
    """Build a SincNet whose filter/channel counts match the checkpoint tensors."""
    low = state_dict[f"{prefix}conv1d.0.filterbank.low_hz_"]
    window = state_dict[f"{prefix}conv1d.0.filterbank.window_"]
    conv1 = state_dict[f"{prefix}conv1d.1.weight"]
    conv2 = state_dict[f"{prefix}conv1d.2.weight"]
    return SincNet(stride=stride, sample_rate=sample_rate, num_filters=2 * low.shape[0],
                   kernel_size=2 * window.shape[0] + 1,
                   conv_channels=(conv1.shape[0], conv2.shape[0]))
