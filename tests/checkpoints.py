"""Small random checkpoints in the layout of the published pyannote ``pytorch_model.bin``.

For the tests, which have neither network access nor trained weights:
:func:`write_checkpoint` saves a Lightning-style checkpoint (``state_dict``,
``hyper_parameters``, ``pyannote.audio`` with pickled ``Specifications`` / ``Problem`` /
``Resolution`` objects under their pyannote module path) that
:func:`streamer.models.pyannote.load_segmentation` / ``load_embedding`` read like the
real ones. The weights are random: outputs are meaningless but deterministic.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import torch

from streamer.models.pyannote.pyannet import PyanNet
from streamer.models.pyannote.resnet import BasicBlock, ResNet
from streamer.models.pyannote.sincnet import SincNet
from streamer.models.pyannote.xvector import XVectorSincNet

KINDS = ("segmentation-3.0", "segmentation-2", "wespeaker", "xvector")
_TASK_MODULE = "pyannote.audio.core.task"


class Problem(enum.Enum):
    BINARY_CLASSIFICATION = 0
    MONO_LABEL_CLASSIFICATION = 1
    MULTI_LABEL_CLASSIFICATION = 2
    REPRESENTATION = 3


class Resolution(enum.Enum):
    FRAME = 1
    CHUNK = 2


@dataclasses.dataclass
class Specifications:
    problem: Problem
    resolution: Resolution
    duration: float
    min_duration: float | None = None
    warm_up: tuple[float, float] = (0.0, 0.0)
    classes: list[str] | None = None
    powerset_max_classes: int | None = None
    permutation_invariant: bool = False


@contextlib.contextmanager
def _pyannote_names() -> Iterator[None]:
    """Make the classes above picklable under pyannote's module path, temporarily."""
    created = [name for name in ("pyannote", "pyannote.audio", "pyannote.audio.core",
                                 _TASK_MODULE) if name not in sys.modules]
    for name in created:
        sys.modules[name] = types.ModuleType(name)
    task = sys.modules[_TASK_MODULE]
    saved = {cls.__name__: (cls.__module__, getattr(task, cls.__name__, None))
             for cls in (Problem, Resolution, Specifications)}
    try:
        for cls in (Problem, Resolution, Specifications):
            cls.__module__ = _TASK_MODULE
            setattr(task, cls.__name__, cls)
        yield
    finally:
        for cls in (Problem, Resolution, Specifications):
            module, previous = saved[cls.__name__]
            cls.__module__ = module
            if previous is None:
                delattr(task, cls.__name__)
        for name in created:
            sys.modules.pop(name, None)


def _init_sinc(sincnet: SincNet, sample_rate: int = 16000) -> None:
    bank = sincnet.conv1d[0].filterbank
    count = bank.low_hz_.shape[0]
    to_mel = lambda hz: 2595 * math.log10(1 + hz / 700)  # noqa: E731
    mels = torch.linspace(to_mel(30), to_mel(sample_rate / 2 - 100), count + 1)
    hz = 700 * (10 ** (mels / 2595) - 1)
    with torch.no_grad():
        bank.low_hz_.copy_(hz[:-1, None])
        bank.band_hz_.copy_(torch.diff(hz)[:, None])


def _segmentation(powerset: bool) -> tuple[torch.nn.Module, dict[str, Any], Specifications, str]:
    lstm = {"hidden_size": 16, "num_layers": 2, "bidirectional": True, "monolithic": True,
            "dropout": 0.0, "batch_first": True}
    linear = {"hidden_size": 16, "num_layers": 2}
    sincnet = SincNet(stride=10)
    _init_sinc(sincnet)
    classes = [f"speaker#{i + 1}" for i in range(3 if powerset else 4)]
    outputs = 7 if powerset else 4
    model = PyanNet(sincnet, lstm, linear, outputs, powerset)
    hparams = {"sample_rate": 16000, "num_channels": 1,
               "sincnet": {"stride": 10, "sample_rate": 16000}, "lstm": lstm, "linear": linear}
    specs = Specifications(
        Problem.MONO_LABEL_CLASSIFICATION if powerset else Problem.MULTI_LABEL_CLASSIFICATION,
        Resolution.FRAME, 10.0 if powerset else 5.0, classes=classes,
        powerset_max_classes=2 if powerset else None, permutation_invariant=True)
    return model, hparams, specs, "pyannote.audio.models.segmentation.PyanNet.PyanNet"


def _wespeaker() -> tuple[torch.nn.Module, dict[str, Any], Specifications, str]:
    model = torch.nn.Module()
    model.resnet = ResNet(BasicBlock, [1, 1, 1, 1], m_channels=4, feat_dim=80, embed_dim=32,
                          two_emb_layer=False)
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    hparams = {"sample_rate": 16000, "num_channels": 1, "num_mel_bins": 80, "frame_length": 25,
               "frame_shift": 10, "dither": 0.0, "window_type": "hamming", "use_energy": False}
    specs = Specifications(Problem.REPRESENTATION, Resolution.CHUNK, 10.0)
    return model, hparams, specs, "pyannote.audio.models.embedding.wespeaker.WeSpeakerResNet34"


def _xvector() -> tuple[torch.nn.Module, dict[str, Any], Specifications, str]:
    sincnet = SincNet(stride=10)
    _init_sinc(sincnet)
    model = XVectorSincNet(sincnet, [(32, 5), (32, 3), (32, 3), (32, 1), (64, 1)], 16)
    hparams = {"sample_rate": 16000, "num_channels": 1,
               "sincnet": {"stride": 10, "sample_rate": 16000}, "dimension": 16}
    specs = Specifications(Problem.REPRESENTATION, Resolution.CHUNK, 3.0)
    return model, hparams, specs, "pyannote.audio.models.embedding.xvector.XVectorSincNet"


def write_checkpoint(path: str | Path, kind: str, *, seed: int = 0) -> Path:
    """Write a small random ``kind`` checkpoint (one of :data:`KINDS`) to ``path``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    if kind.startswith("segmentation"):
        model, hparams, specs, architecture = _segmentation(kind == "segmentation-3.0")
    elif kind == "wespeaker":
        model, hparams, specs, architecture = _wespeaker()
    else:
        model, hparams, specs, architecture = _xvector()
    module, _, name = architecture.rpartition(".")
    checkpoint = {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.1.0",
        "state_dict": model.state_dict(), "hyper_parameters": hparams,
        "pyannote.audio": {"versions": {"torch": torch.__version__, "pyannote.audio": "3.1.1"},
                           "architecture": {"module": module, "class": name},
                           "specifications": specs},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _pyannote_names():
        torch.save(checkpoint, path)
    return path
