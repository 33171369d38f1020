"""PyanNet segmentation network (SincNet -> bidirectional LSTM -> linear -> classifier).

State-dict compatible with ``pyannote.audio.models.segmentation.PyanNet`` (the network of
``pyannote/segmentation`` 2.x and ``pyannote/segmentation-3.0``). Every size is read from the
checkpoint's ``hyper_parameters`` and ``specifications``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamer.audio import SAMPLE_RATE
from streamer.errors import ModelLoadError
from streamer.models.pyannote.checkpoint import Checkpoint
from streamer.models.pyannote.powerset import num_powerset_classes, powerset_mapping
from streamer.models.pyannote.sincnet import SincNet, sincnet_from_state_dict

logger = logging.getLogger(__name__)

# pyannote.audio's own defaults, used only where a checkpoint leaves a key out.
SINCNET_DEFAULTS = {"stride": 10}
LSTM_DEFAULTS = {"hidden_size": 128, "num_layers": 2, "bidirectional": True,
                 "monolithic": True, "dropout": 0.0}
LINEAR_DEFAULTS = {"hidden_size": 128, "num_layers": 2}

# pyannote.audio.core.task.Problem values.
PROBLEM_BINARY, PROBLEM_MONOLABEL, PROBLEM_MULTILABEL = 0, 1, 2


@dataclass(frozen=True)
class SegmentationSpec:
    """What the segmentation head predicts.

    Attributes:
        classes: Local speaker names (``speaker#1``...).
        duration: Training chunk duration in seconds.
        powerset_max_classes: Max simultaneous speakers for powerset models, else None.
    """

    classes: tuple[str, ...]
    duration: float
    powerset_max_classes: int | None

    @property
    def powerset(self) -> bool:
        return self.powerset_max_classes is not None

    @property
    def num_outputs(self) -> int:
        if self.powerset_max_classes is None:
            return len(self.classes)
        return num_powerset_classes(len(self.classes), self.powerset_max_classes)


class PyanNet(nn.Module):
    """``(batch, 1, samples) -> (batch, frames, outputs)`` raw segmentation scores.

    Outputs are log-probabilities over powerset classes (powerset models) or per-speaker
    sigmoid activations (multilabel models), as in pyannote.audio.
    """

    def __init__(self, sincnet: SincNet, lstm: dict[str, Any], linear: dict[str, Any],
                 num_outputs: int, powerset: bool) -> None:
        super().__init__()
        self.sincnet = sincnet
        hidden, layers = int(lstm["hidden_size"]), int(lstm["num_layers"])
        bidirectional = bool(lstm["bidirectional"])
        self.monolithic = bool(lstm["monolithic"])
        lstm_out = hidden * (2 if bidirectional else 1)
        if self.monolithic:
            self.lstm = nn.LSTM(sincnet.out_channels, hidden, num_layers=layers,
                                bidirectional=bidirectional, batch_first=True)
        else:
            self.lstm = nn.ModuleList([
                nn.LSTM(sincnet.out_channels if i == 0 else lstm_out, hidden, num_layers=1,
                        bidirectional=bidirectional, batch_first=True)
                for i in range(layers)])
        sizes = [lstm_out] + [int(linear["hidden_size"])] * int(linear["num_layers"])
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.classifier = nn.Linear(sizes[-1], num_outputs)
        self.powerset = powerset

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self._after_sincnet(self.sincnet(waveforms))

    def forward_pooled(self, maxima: torch.Tensor, minima: torch.Tensor,
                       statistics: torch.Tensor) -> torch.Tensor:
        """Same output as :meth:`forward`, from the first layer's pooled raw responses and
        the chunk's normalisation statistics (see :meth:`SincNet.forward_pooled`)."""
        return self._after_sincnet(self.sincnet.forward_pooled(maxima, minima, statistics))

    def _after_sincnet(self, features: torch.Tensor) -> torch.Tensor:
        outputs = features.transpose(1, 2)
        if self.monolithic:
            outputs, _ = self.lstm(outputs)
        else:
            for lstm in self.lstm:
                outputs, _ = lstm(outputs)
        for linear in self.linear:
            outputs = F.leaky_relu(linear(outputs))
        scores = self.classifier(outputs)
        return F.log_softmax(scores, dim=-1) if self.powerset else torch.sigmoid(scores)


def _merged(defaults: dict[str, Any], given: Any) -> dict[str, Any]:
    return {**defaults, **(given if isinstance(given, dict) else {})}


def segmentation_spec(checkpoint: Checkpoint) -> SegmentationSpec:
    """Read classes, chunk duration and powerset size from the checkpoint."""
    specs = checkpoint.specifications
    if not specs or not specs.get("classes") or not specs.get("duration"):
        raise ModelLoadError(
            f"{checkpoint.path} has no task specifications (classes, duration) under "
            "'pyannote.audio': re-save it with pyannote.audio >= 3.0 or use the published "
            "pytorch_model.bin")
    problem = specs.get("problem")
    max_set = specs.get("powerset_max_classes")
    if problem == PROBLEM_MONOLABEL and max_set is None:
        raise ModelLoadError(
            f"{checkpoint.path} is a mono-label classifier, not a speaker segmentation model")
    if problem not in (PROBLEM_MONOLABEL, PROBLEM_MULTILABEL, PROBLEM_BINARY):
        raise ModelLoadError(
            f"{checkpoint.path} solves task problem {problem!r}; a segmentation model "
            "(multilabel or powerset) is needed")
    powerset = max_set if problem == PROBLEM_MONOLABEL else None
    return SegmentationSpec(tuple(str(c) for c in specs["classes"]),
                            float(specs["duration"]), powerset)


def build_pyannet(checkpoint: Checkpoint) -> tuple[PyanNet, SegmentationSpec, int]:
    """Instantiate PyanNet from a checkpoint and load its weights.

    Returns the module (eval mode, sinc filters precomputed), its spec and sample rate.
    """
    hp = checkpoint.hyper_parameters
    spec = segmentation_spec(checkpoint)
    sample_rate = int(hp.get("sample_rate", SAMPLE_RATE))
    sincnet_hp = _merged(SINCNET_DEFAULTS, hp.get("sincnet"))
    lstm_hp = _merged(LSTM_DEFAULTS, hp.get("lstm"))
    linear_hp = _merged(LINEAR_DEFAULTS, hp.get("linear"))
    state = checkpoint.state_dict
    try:
        sincnet = sincnet_from_state_dict(state, int(sincnet_hp["stride"]), sample_rate)
        model = PyanNet(sincnet, lstm_hp, linear_hp, spec.num_outputs, spec.powerset)
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"{checkpoint.path}: weights do not fit a PyanNet built from its hyper-parameters "
            f"({exc})") from exc
    model.eval()
    model.sincnet.freeze()
    logger.info("PyanNet from %s: %d LSTM layers x %d, %d classes%s", checkpoint.path,
                lstm_hp["num_layers"], lstm_hp["hidden_size"], len(spec.classes),
                f", powerset <= {spec.powerset_max_classes}" if spec.powerset else "")
    return model, spec, sample_rate


__all__ = ["PyanNet", "SegmentationSpec", "build_pyannet", "powerset_mapping",
           "segmentation_spec"]
