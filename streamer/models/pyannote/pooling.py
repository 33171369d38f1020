"""Weighted statistics pooling (mean and unbiased standard deviation over frames).

Same arithmetic as pyannote.audio 3.1 ``StatsPool``: weights with another number of frames
than the sequence are resized with nearest-neighbour interpolation, i.e. spread uniformly
over the chunk.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_weights(weights: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(batch, any_frames) -> (batch, num_frames)`` by nearest-neighbour interpolation."""
    if weights.shape[-1] == num_frames:
        return weights
    return F.interpolate(weights.unsqueeze(1), size=num_frames, mode="nearest").squeeze(1)


def stats_pool(sequences: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, channels, frames)`` -> ``(batch, 2 * channels)`` [mean, std]."""
    if weights is None:
        mean = sequences.mean(dim=-1)
        std = sequences.std(dim=-1, correction=1)
        return torch.cat([mean, std], dim=-1)
    weights = resize_weights(weights, sequences.shape[-1]).unsqueeze(1)
    v1 = weights.sum(dim=2) + 1e-8
    mean = torch.sum(sequences * weights, dim=2) / v1
    dx2 = torch.square(sequences - mean.unsqueeze(2))
    v2 = torch.square(weights).sum(dim=2)
    var = torch.sum(dx2 * weights, dim=2) / (v1 - v2 / v1 + 1e-8)
    return torch.cat([mean, torch.sqrt(var)], dim=1)
