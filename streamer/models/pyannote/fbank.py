"""Kaldi-compatible log mel filterbank features in plain torch (no torchaudio).

Matches ``torchaudio.compliance.kaldi.fbank`` with its defaults (DC offset removal,
pre-emphasis 0.97, power spectrum, 20 Hz .. Nyquist mel bands, snip_edges) as used by
pyannote's WeSpeaker wrapper, followed by per-chunk mean normalisation. The window and the
mel matrix are computed once. (With the ONNX backend the fbank still runs in torch: only the
ResNet is exported.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from streamer.audio import SAMPLE_RATE

_EPSILON = torch.finfo(torch.float32).eps


def _window(kind: str, size: int) -> torch.Tensor:
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46,
                                    dtype=torch.float64)
    if kind == "hanning":
        return torch.hann_window(size, periodic=False, dtype=torch.float64)
    if kind == "povey":
        return torch.hann_window(size, periodic=False, dtype=torch.float64).pow(0.85)
    if kind == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    if kind == "blackman":
        n = torch.arange(size, dtype=torch.float64)
        a = 2 * math.pi / (size - 1)
        return 0.42 - 0.5 * torch.cos(a * n) + 0.08 * torch.cos(2 * a * n)
    raise ValueError(f"unknown window_type {kind!r}")


def _mel(hz: torch.Tensor | float) -> torch.Tensor:
    return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: float,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """``(fft_size // 2 + 1, num_bins)`` triangular mel filters (Kaldi layout)."""
    nyquist = sample_rate / 2
    if high_freq <= 0:
        high_freq += nyquist
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = (mel_low + (index + k) * delta for k in (0.0, 1.0, 2.0))
    mel = _mel(sample_rate / fft_size * torch.arange(fft_size // 2, dtype=torch.float64))
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    banks = torch.cat([banks, torch.zeros(num_bins, 1, dtype=torch.float64)], dim=1)
    return banks.T.contiguous()


class KaldiFbank(nn.Module):
    """``(batch, samples)`` in [-1, 1] -> ``(batch, frames, num_mel_bins)`` normalised fbank."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = 80,
                 frame_length: float = 25.0, frame_shift: float = 10.0,
                 window_type: str = "hamming", use_energy: bool = False,
                 preemphasis: float = 0.97) -> None:
        super().__init__()
        self.window_size = int(sample_rate * frame_length * 0.001)
        self.window_shift = int(sample_rate * frame_shift * 0.001)
        if self.window_size < 2 or self.window_shift < 1:
            raise ValueError("frame_length and frame_shift are too short")
        self.fft_size = 1 << (self.window_size - 1).bit_length()
        self.preemphasis = preemphasis
        self.use_energy = use_energy
        window = _window(window_type, self.window_size)
        self.register_buffer("window", window.float(), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(
            num_mel_bins, self.fft_size, sample_rate).float(), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        if num_samples < self.window_size:
            return 0
        return 1 + (num_samples - self.window_size) // self.window_shift

    def _power_by_fft(self, scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        frames = scaled.unfold(-1, self.window_size, self.window_shift)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        energy = None
        if self.use_energy:
            energy = frames.square().sum(dim=-1).clamp_min(_EPSILON).log().clamp_min(0.0)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - self.preemphasis * previous
        spectrum = torch.fft.rfft(frames * self.window, n=self.fft_size)
        return spectrum.real.square() + spectrum.imag.square(), energy

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> ``(batch, frames, features)``."""
        power, energy = self._power_by_fft(waveforms * 32768.0)
        features = (power @ self.mel_banks).clamp_min(_EPSILON).log()
        if energy is not None:
            features = torch.cat([energy.unsqueeze(-1), features], dim=-1)
        return features - features.mean(dim=-2, keepdim=True)
