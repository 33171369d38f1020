"""x-vector TDNN with SincNet features (pyannote/embedding), 512-d.

State-dict compatible with ``pyannote.audio.models.embedding.xvector.XVectorSincNet``:
``sincnet.*``, ``tdnns.{3i}`` convolutions (each followed by LeakyReLU and
``tdnns.{3i+2}`` batch norm) and ``embedding``. Channel counts and kernel sizes are read from
the tensors; the dilations (1, 2, 3, 1, 1) are part of the architecture's definition, not of
the checkpoint. Like the ResNet, it is split into trunk (frame features) and head (pooling).
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn

from streamer.audio import SAMPLE_RATE
from streamer.errors import ModelLoadError
from streamer.models.pyannote.checkpoint import Checkpoint
from streamer.models.pyannote.pooling import stats_pool
from streamer.models.pyannote.sincnet import SincNet, sincnet_from_state_dict

logger = logging.getLogger(__name__)

#: Dilation of each TDNN layer of pyannote's XVectorSincNet.
TDNN_DILATIONS = (1, 2, 3, 1, 1)


class XVectorSincNet(nn.Module):
    """``(batch, 1, samples)`` -> ``(batch, dimension)`` x-vector."""

    def __init__(self, sincnet: SincNet, layers: list[tuple[int, int]], dimension: int) -> None:
        super().__init__()
        self.sincnet = sincnet
        self.tdnns = nn.ModuleList()
        channels = sincnet.out_channels
        for (out_channels, kernel), dilation in zip(layers, TDNN_DILATIONS):
            self.tdnns.extend([nn.Conv1d(channels, out_channels, kernel, dilation=dilation),
                               nn.LeakyReLU(), nn.BatchNorm1d(out_channels)])
            channels = out_channels
        self.embedding = nn.Linear(2 * channels, dimension)

    def num_frames(self, num_samples: int) -> int:
        """Frames of the trunk output for ``num_samples`` input samples."""
        frames = self.sincnet.num_frames(num_samples)
        for layer in self.tdnns:
            if isinstance(layer, nn.Conv1d):
                frames -= layer.dilation[0] * (layer.kernel_size[0] - 1)
        return max(frames, 0)

    def trunk(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() == 2:
            waveforms = waveforms.unsqueeze(1)
        outputs = self.sincnet(waveforms)
        for layer in self.tdnns:
            outputs = layer(outputs)
        return outputs

    def head(self, frames: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding(stats_pool(frames, weights))

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.trunk(waveforms), weights)


def build_xvector(checkpoint: Checkpoint) -> tuple[XVectorSincNet, int, int]:
    """Instantiate the x-vector from a checkpoint; returns module, sample rate, dimension."""
    hp = checkpoint.hyper_parameters
    state = checkpoint.state_dict
    sample_rate = int(hp.get("sample_rate", SAMPLE_RATE))
    sincnet_hp = hp.get("sincnet") if isinstance(hp.get("sincnet"), dict) else {}
    indices = sorted(int(m.group(1)) for key in state
                     if (m := re.match(r"tdnns\.(\d+)\.weight$", key)) and state[key].dim() == 3)
    if len(indices) > len(TDNN_DILATIONS) or indices != [3 * i for i in range(len(indices))]:
        raise ModelLoadError(f"{checkpoint.path}: unexpected x-vector TDNN layout {indices}")
    layers = [(state[f"tdnns.{i}.weight"].shape[0], state[f"tdnns.{i}.weight"].shape[2])
              for i in indices]
    dimension = int(hp.get("dimension", state["embedding.weight"].shape[0]))
    try:
        sincnet = sincnet_from_state_dict(state, int(sincnet_hp.get("stride", 10)), sample_rate)
        model = XVectorSincNet(sincnet, layers, dimension)
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{checkpoint.path}: weights do not fit an XVectorSincNet built from its "
            f"hyper-parameters ({exc})") from exc
    model.eval()
    model.sincnet.freeze()
    logger.info("XVectorSincNet from %s: TDNN %s, %d-d", checkpoint.path, layers, dimension)
    return model, sample_rate, dimension
