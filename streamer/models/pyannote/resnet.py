"""WeSpeaker ResNet speaker embeddings (pyannote/wespeaker-voxceleb-resnet34-LM and kin).

State-dict compatible with ``pyannote.audio.models.embedding.wespeaker.WeSpeakerResNet*``
(keys under ``resnet.``). Channel widths, block counts, block type (basic or bottleneck),
feature and embedding sizes are read from the checkpoint tensors; the fbank settings from its
``hyper_parameters``. For inference, batch norms are folded into the convolutions once.

The network is split into a *trunk* (waveform -> frame-level features, the expensive part)
and a *head* (weighted statistics pooling -> linear), so the caller can run the trunk once
per distinct chunk and pool it with several speakers' weights.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from streamer.audio import SAMPLE_RATE
from streamer.errors import ModelLoadError
from streamer.models.pyannote.checkpoint import Checkpoint
from streamer.models.pyannote.fbank import KaldiFbank
from streamer.models.pyannote.pooling import stats_pool

logger = logging.getLogger(__name__)


def _conv_bn(inputs: int, outputs: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.Module]:
    conv = nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=kernel // 2, bias=False)
    return conv, nn.BatchNorm2d(outputs)


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A convolution with bias computing ``bn(conv(x))`` (eval-mode batch norm)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return conv
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      stride=conv.stride, padding=conv.padding, bias=True)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return fused


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inputs: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(inputs, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != planes * self.expansion:
            self.shortcut = nn.Sequential(*_conv_bn(inputs, planes * self.expansion, 1, stride))

    def fuse(self) -> None:
        for i in (1, 2, 3):
            if hasattr(self, f"conv{i}"):
                setattr(self, f"conv{i}", _fold(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")))
                setattr(self, f"bn{i}", nn.Identity())
        if len(self.shortcut):
            self.shortcut = nn.Sequential(_fold(self.shortcut[0], self.shortcut[1]))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, inputs: int, planes: int, stride: int) -> None:
        nn.Module.__init__(self)
        self.conv1, self.bn1 = _conv_bn(inputs, planes, 1, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * self.expansion, 1, 1)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != planes * self.expansion:
            self.shortcut = nn.Sequential(*_conv_bn(inputs, planes * self.expansion, 1, stride))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """WeSpeaker ResNet: fbank ``(batch, frames, feat_dim)`` -> frame features / embedding."""

    def __init__(self, block: type[BasicBlock], num_blocks: list[int], m_channels: int,
                 feat_dim: int, embed_dim: int, two_emb_layer: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(1, m_channels, 3, 1)
        inputs = m_channels
        for index, count in enumerate(num_blocks):
            planes, blocks = m_channels * 2 ** index, []
            for j in range(count):
                blocks.append(block(inputs, planes, (1 if index == 0 else 2) if j == 0 else 1))
                inputs = planes * block.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.num_layers = len(num_blocks)
        stats_dim = (feat_dim // 8) * m_channels * 8 * block.expansion
        self.seg_1 = nn.Linear(2 * stats_dim, embed_dim)
        self.two_emb_layer = two_emb_layer
        if two_emb_layer:
            self.seg_bn_1 = nn.BatchNorm1d(embed_dim, affine=False)
            self.seg_2 = nn.Linear(embed_dim, embed_dim)
        #: On the time axis: input frames on each side that one output frame depends on,
        #: and input frames per output frame.
        self.time_context, self.time_stride = self._time_geometry()

    def _time_geometry(self) -> tuple[int, int]:
        size, jump = 1, 1
        convs = [self.conv1] + [getattr(block, f"conv{i}")
                                for index in range(self.num_layers)
                                for block in getattr(self, f"layer{index + 1}")
                                for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
        for conv in convs:
            size += (conv.kernel_size[1] - 1) * jump
            jump *= conv.stride[1]
        return (size - 1) // 2, jump

    def fuse(self) -> None:
        self.conv1 = _fold(self.conv1, self.bn1)
        self.bn1 = nn.Identity()
        for index in range(self.num_layers):
            for block in getattr(self, f"layer{index + 1}"):
                block.fuse()

    def frames(self, fbank: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, feat)`` -> ``(batch, channels * freq, frames / 8)``."""
        out = fbank.transpose(1, 2).unsqueeze(1).contiguous(memory_format=torch.channels_last)
        out = F.relu(self.bn1(self.conv1(out)))
        for index in range(self.num_layers):
            out = getattr(self, f"layer{index + 1}")(out)
        return out.flatten(1, 2)

    def embed(self, frames: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        embedding = self.seg_1(stats_pool(frames, weights))
        if self.two_emb_layer:
            embedding = self.seg_2(self.seg_bn_1(F.relu(embedding)))
        return embedding


class WeSpeakerResNet(nn.Module):
    """Waveform ``(batch, 1 | -, samples)`` -> embedding, split into trunk and head."""

    def __init__(self, fbank: KaldiFbank, resnet: ResNet) -> None:
        super().__init__()
        self.fbank = fbank
        self.resnet = resnet

    def num_frames(self, num_samples: int) -> int:
        """Frames of the trunk output for ``num_samples`` input samples."""
        frames = self.fbank.num_frames(num_samples)
        for _ in range(self.resnet.num_layers - 1):  # layers 2.. halve the time axis
            frames = (frames - 1) // 2 + 1 if frames > 0 else 0
        return frames

    def trunk(self, waveforms: torch.Tensor) -> torch.Tensor:
        if waveforms.dim() == 3:
            waveforms = waveforms[:, 0]
        return self.resnet.frames(self.fbank(waveforms))

    @property
    def crop_margin(self) -> int:
        """Fbank frames :meth:`trunk_span` keeps on each side: the receptive field, rounded
        up to the ResNet's stride grid."""
        stride = self.resnet.time_stride
        return -(-self.resnet.time_context // stride) * stride

    def trunk_span(self, waveforms: torch.Tensor, start: int, stop: int,
                   frames: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Output frames ``[start, stop)`` of :meth:`trunk`, computing the ResNet only over
        the fbank frames they depend on. The fbank (and its mean normalisation) covers the
        whole chunk as in :meth:`trunk`; the crop starts on the ResNet's stride grid and
        keeps the full receptive field on both sides, so the frames are the same.
        ``frames`` runs the ResNet on fbank features (default: this module's)."""
        if waveforms.dim() == 3:
            waveforms = waveforms[:, 0]
        features = self.fbank(waveforms)
        stride, margin = self.resnet.time_stride, self.crop_margin
        low = max(0, stride * start - margin)
        high = min(features.shape[1], stride * stop + margin)
        output = (frames or self.resnet.frames)(features[:, low:high])
        offset = start - low // stride
        return output[..., offset:offset + stop - start]

    def head(self, frames: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.resnet.embed(frames, weights)

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.trunk(waveforms), weights)


def _resnet_layout(state: dict[str, torch.Tensor]) -> tuple[type[BasicBlock], list[int]]:
    counts: dict[int, int] = {}
    for key in state:
        match = re.match(r"resnet\.layer(\d+)\.(\d+)\.conv1\.weight$", key)
        if match:
            layer, index = int(match.group(1)), int(match.group(2))
            counts[layer] = max(counts.get(layer, 0), index + 1)
    if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
        raise ModelLoadError("state dict has no resnet.layerN blocks")
    block = Bottleneck if "resnet.layer1.0.conv3.weight" in state else BasicBlock
    return block, [counts[i] for i in sorted(counts)]


def build_wespeaker(checkpoint: Checkpoint) -> tuple[WeSpeakerResNet, int, int]:
    """Instantiate the ResNet from a checkpoint and load its weights.

    Returns the module (eval mode, batch norms folded), sample rate and dimension.
    """
    hp = checkpoint.hyper_parameters
    state = checkpoint.state_dict
    sample_rate = int(hp.get("sample_rate", SAMPLE_RATE))
    try:
        block, num_blocks = _resnet_layout(state)
        m_channels = state["resnet.conv1.weight"].shape[0]
        embed_dim, pooled = state["resnet.seg_1.weight"].shape
        num_mel_bins = int(hp.get("num_mel_bins", 80))
        use_energy = bool(hp.get("use_energy", False))
        feat_dim = num_mel_bins + int(use_energy)
        resnet = ResNet(block, num_blocks, m_channels, feat_dim, embed_dim,
                        two_emb_layer="resnet.seg_2.weight" in state)
        model = WeSpeakerResNet(KaldiFbank(
            sample_rate=sample_rate, num_mel_bins=num_mel_bins,
            frame_length=float(hp.get("frame_length", 25)),
            frame_shift=float(hp.get("frame_shift", 10)),
            window_type=str(hp.get("window_type", "hamming")), use_energy=use_energy), resnet)
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{checkpoint.path}: weights do not fit a WeSpeaker ResNet built from its "
            f"hyper-parameters ({exc})") from exc
    if float(hp.get("dither", 0.0)) != 0.0:
        logger.warning("%s: ignoring dither=%s (inference is deterministic)",
                       checkpoint.path, hp["dither"])
    model.eval()
    model.resnet.fuse()
    model.resnet.to(memory_format=torch.channels_last)  # faster convolutions (oneDNN/cuDNN)
    logger.info("WeSpeaker ResNet from %s: blocks %s x %s, %d channels, %d-d (pooled %d)",
                checkpoint.path, num_blocks, block.__name__, m_channels, embed_dim, pooled)
    return model, sample_rate, int(embed_dim)
