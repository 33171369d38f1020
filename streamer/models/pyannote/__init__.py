"""pyannote models, implemented natively in torch and loaded from the published checkpoints.

* Segmentation: ``pyannote/segmentation-3.0`` (powerset) and ``pyannote/segmentation`` 2.x
  (multilabel), both PyanNet.
* Embedding: ``pyannote/wespeaker-voxceleb-resnet34-LM`` (WeSpeaker ResNet) and
  ``pyannote/embedding`` (x-vector with SincNet features).

``source`` is a ``pytorch_model.bin`` file, a folder holding one, or a Hugging Face hub repo
id written ``hf:owner/name`` (``huggingface_hub`` needed, token from ``token=`` or
``HF_TOKEN``). Checkpoints are read
with a restricted unpickler (no pyannote.audio, lightning or torchaudio needed, no code
execution). ``backend="onnx"`` exports the same network to ONNX and runs it with onnxruntime.
Nothing is downloaded at import time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamer.errors import ConfigError, ModelLoadError
from streamer.models.packaged import is_packaged, packaged_path
from streamer.models.pyannote.checkpoint import Checkpoint, read_checkpoint
from streamer.models.pyannote.hub import resolve_checkpoint
from streamer.models.pyannote.pyannet import build_pyannet
from streamer.models.pyannote.resnet import build_wespeaker
from streamer.models.pyannote.device import (Runner, check_precision, resolve_device,
                                             torch_runner, warn_slow_bf16)
from streamer.models.pyannote.embedding import PyannoteEmbedding
from streamer.models.pyannote.segmentation import PyannoteSegmentation
from streamer.models.pyannote.xvector import build_xvector

logger = logging.getLogger(__name__)

SEGMENTATION_ARCHITECTURES = ("PyanNet",)
EMBEDDING_ARCHITECTURES = ("WeSpeakerResNet34", "WeSpeakerResNet152", "WeSpeakerResNet221",
                           "WeSpeakerResNet293", "XVectorSincNet")
BACKENDS = ("torch", "onnx")

__all__ = ["load_segmentation", "load_embedding", "PyannoteSegmentation",
           "PyannoteEmbedding", "detect_architecture", "SEGMENTATION_ARCHITECTURES",
           "EMBEDDING_ARCHITECTURES"]


def detect_architecture(checkpoint: Checkpoint) -> str:
    """pyannote class name of the model, from the checkpoint metadata or its tensor names."""
    if checkpoint.class_name:
        return checkpoint.class_name
    keys = checkpoint.state_dict.keys()
    if any(k.startswith("resnet.") for k in keys):
        return "WeSpeakerResNet34"
    has_sincnet = any(k.startswith("sincnet.") for k in keys)
    if has_sincnet and any(k.startswith("tdnns.") for k in keys):
        return "XVectorSincNet"
    if has_sincnet and any(k.startswith("lstm.") for k in keys):
        return "PyanNet"
    return ""


def _available_device(device: str) -> torch.device:
    resolved = resolve_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device='cuda' was asked for but torch sees no CUDA GPU here: "
                             "use device='cpu' (or 'auto'), or install a CUDA build of torch")
    return resolved


def _prepare(source: str | os.PathLike[str], kind: str, device: str, backend: str,
             revision: str | None, cache_dir: str | Path | None,
             token: str | None) -> tuple[Checkpoint, str, torch.device]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    resolved = _available_device(device)
    if is_packaged(source):
        source = packaged_path(str(source))
    checkpoint = read_checkpoint(resolve_checkpoint(
        source, revision=revision, cache_dir=cache_dir, token=token))
    architecture = detect_architecture(checkpoint)
    wanted, other = ((SEGMENTATION_ARCHITECTURES, EMBEDDING_ARCHITECTURES) if kind ==
                     "segmentation" else (EMBEDDING_ARCHITECTURES, SEGMENTATION_ARCHITECTURES))
    if architecture in other:
        other_kind = "embedding" if kind == "segmentation" else "segmentation"
        example = ("hf:pyannote/segmentation-3.0" if kind == "segmentation"
                   else "hf:pyannote/wespeaker-voxceleb-resnet34-LM")
        raise ModelLoadError(
            f"{checkpoint.path} is a speaker {other_kind} checkpoint ({architecture}), not a "
            f"{kind} model: pass it as the {other_kind} model (--{other_kind}) and give a "
            f"{kind} model here, e.g. {example}")
    if architecture not in wanted:
        raise ModelLoadError(
            f"{checkpoint.path} holds an unsupported architecture "
            f"({checkpoint.architecture or 'unknown'}); supported {kind} models: "
            f"{', '.join(wanted)}")
    return checkpoint, architecture, resolved


def load_segmentation(source: str | os.PathLike[str], *, device: str = "cpu",
                      backend: str = "torch", revision: str | None = None,
                      cache_dir: str | Path | None = None,
                      token: str | None = None) -> PyannoteSegmentation:
    """Load a pyannote segmentation model (PyanNet, powerset or multilabel).

    Args:
        source: ``pytorch_model.bin``, a folder holding one, or a hub repo id
            (``"hf:pyannote/segmentation-3.0"``, optionally ``"hf:repo@revision"``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        backend: ``"torch"`` or ``"onnx"`` (export once, run with onnxruntime).
        revision, cache_dir, token: hub download options (token defaults to ``HF_TOKEN``).

    Raises:
        ModelLoadError: missing/unreadable/wrong file, hub unreachable or gated, missing
            optional dependency.
    """
    checkpoint, _, resolved = _prepare(source, "segmentation", device, backend, revision,
                                       cache_dir, token)
    model, spec, sample_rate = build_pyannet(checkpoint)
    num_samples = round(spec.duration * sample_rate)
    runner: Runner
    from_responses = None
    if backend == "onnx":
        from streamer.models.pyannote.onnx import onnx_runner
        example = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
        graph = onnx_runner(
            _SegmentationGraph(model), checkpoint.path, "segmentation", {"waveforms": example},
            {"waveforms": {0: "batch", 1: "samples"}, "output": {0: "batch", 1: "frames"}},
            resolved)
        runner = _numpy_runner(graph)
        if resolved.type == "cpu":
            with torch.inference_mode():
                pooled = F.max_pool1d(model.sincnet.filter_responses(example).transpose(1, 2),
                                      model.sincnet.first_pool).transpose(1, 2)
                inputs = {"maxima": pooled, "minima": -pooled,
                          "statistics": model.sincnet.norm_statistics(example)}
            responses_graph = onnx_runner(
                _PooledGraph(model), checkpoint.path, "segmentation-pooled", inputs,
                {"maxima": {0: "batch", 1: "windows"}, "minima": {0: "batch", 1: "windows"},
                 "statistics": {0: "batch"}, "output": {0: "batch", 1: "frames"}}, resolved)
            from_responses = _numpy_runner(responses_graph)
    else:
        model.to(resolved)
        runner = torch_runner(lambda x: model(x.unsqueeze(1)), resolved)
        if resolved.type == "cpu":
            from_responses = _torch_responses_runner(model)
    return PyannoteSegmentation(model, spec, sample_rate, runner, device=resolved,
                                backend=backend, source=str(checkpoint.path),
                                responses_runner=from_responses)


def _load_campplus(device: str, precision: str, backend: str) -> Any:
    """The packaged CAM++ encoder: torch on ``device``, or its network in ONNX Runtime
    (the filterbank and the weighted pooling stay in torch)."""
    if precision != "fp32":
        raise ConfigError("precision 'bf16' is offered for the WeSpeaker ResNet; CAM++ "
                          "runs in fp32")
    from streamer.models.campplus import CampPlusEmbedding

    resolved = _available_device(device)
    embedding = CampPlusEmbedding(device=str(resolved), source="packaged:campplus")
    if backend == "onnx":
        from streamer.models.pyannote.onnx import onnx_runner
        example = 0.1 * torch.randn(1, 10 * embedding.sample_rate,
                                    generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            features = embedding.fbank(example.to(resolved)).cpu()
        graph = onnx_runner(
            _FramesGraph(embedding.model.cpu()), Path(packaged_path("packaged:campplus")),
            "embedding-campplus", {"features": features},
            {"features": {0: "batch", 1: "frames"}, "output": {0: "batch", 2: "frames"}},
            resolved)
        embedding.model.to(resolved)
        embedding.use_frames(_numpy_runner(graph), backend)
    return embedding


def load_embedding(source: str | os.PathLike[str], *, device: str = "cpu",
                   backend: str = "torch", revision: str | None = None,
                   cache_dir: str | Path | None = None, token: str | None = None,
                   precision: str = "fp32", compile: bool = False) -> Any:
    """Load a pyannote speaker embedding model (WeSpeaker ResNet or x-vector SincNet).

    Same arguments and errors as :func:`load_segmentation`, plus ``precision``: ``"fp32"``
    (exact) or ``"bf16"`` (WeSpeaker ResNet with the torch backend: the trunk under bfloat16
    autocast, ~3.5x faster on CPUs with AMX; ValueError otherwise). ``"packaged:campplus"``
    gives the packaged CAM++ encoder (:mod:`streamer.models.campplus`).

    ``compile=True`` runs the trunk through ``torch.compile`` (torch backend): it pays off
    on GPUs in bf16, where fusing the casts and element-wise layers around the
    convolutions saves most; outputs stay those of the eager trunk up to rounding. Each
    new input shape compiles on first use (seconds), so call
    :meth:`~streamer.models.pyannote.embedding.PyannoteEmbedding.warm_up` before serving.
    """
    check_precision(precision, backend)
    if compile and backend != "torch":
        raise ConfigError(f"compile runs with the torch backend only; got backend {backend!r}")
    if str(source) == "packaged:campplus":
        if compile:
            raise ConfigError("compile applies to the pyannote embedding models (WeSpeaker "
                              "ResNet, x-vector), not to packaged:campplus")
        return _load_campplus(device, precision, backend)
    checkpoint, architecture, resolved = _prepare(source, "embedding", device, backend,
                                                  revision, cache_dir, token)
    if precision == "bf16" and architecture == "XVectorSincNet":
        raise ConfigError("precision 'bf16' is offered for the WeSpeaker ResNet, whose "
                          "convolutions it speeds up ~3.5x; the x-vector's SincNet drifts by "
                          "~3 % in bf16 and the model is cheap in fp32: use precision 'fp32'")
    warn_slow_bf16(precision, resolved)
    if architecture == "XVectorSincNet":
        module, sample_rate, dimension = build_xvector(checkpoint)
    else:
        module, sample_rate, dimension = build_wespeaker(checkpoint)
    runner: Runner
    frames = None  # fbank -> ResNet frames, for running the ResNet on part of a chunk
    if backend == "onnx":
        from streamer.models.pyannote.onnx import onnx_runner
        example = 0.1 * torch.randn(1, 10 * sample_rate,
                                    generator=torch.Generator().manual_seed(0))
        if architecture == "XVectorSincNet":
            graph = onnx_runner(
                _TrunkGraph(module), checkpoint.path, "embedding", {"waveforms": example},
                {"waveforms": {0: "batch", 1: "samples"}, "output": {0: "batch", 2: "frames"}},
                resolved)
            runner = _numpy_runner(graph)
        else:  # the fbank stays in torch (cheap); the ResNet runs in ONNX Runtime
            with torch.inference_mode():
                features = module.fbank(example)
            graph = onnx_runner(
                _FramesGraph(module.resnet), checkpoint.path, "embedding-resnet",
                {"features": features},
                {"features": {0: "batch", 1: "frames"}, "output": {0: "batch", 2: "frames"}},
                resolved)
            frames = _numpy_runner(graph)
            runner = _fbank_runner(module.fbank, frames)
    else:
        module.to(resolved)
        runner = torch_runner(torch.compile(module.trunk) if compile else module.trunk,
                              resolved)
    embedding = PyannoteEmbedding(architecture, module, sample_rate, dimension, runner,
                                  device=resolved, backend=backend, source=str(checkpoint.path),
                                  frames_runner=frames)
    embedding.precision = precision
    return embedding


class _SegmentationGraph(nn.Module):
    """``(batch, samples) -> raw scores``: the graph exported to ONNX."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.model(waveforms.unsqueeze(1))


class _PooledGraph(nn.Module):
    """``(maxima, minima, statistics) -> raw scores``: the network from the first layer's
    pooled raw responses (see :class:`FilterbankCache`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, maxima: torch.Tensor, minima: torch.Tensor,
                statistics: torch.Tensor) -> torch.Tensor:
        return self.model.forward_pooled(maxima, minima, statistics)


class _TrunkGraph(nn.Module):
    """``(batch, samples) -> frame features`` (x-vector: SincNet and TDNN layers)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        return self.module.trunk(waveforms)


class _FramesGraph(nn.Module):
    """``(batch, fbank frames, features) -> frame features`` of a ResNet or CAM++."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.resnet.frames(features)


def _fbank_runner(fbank: nn.Module, frames: Callable[[torch.Tensor], torch.Tensor]) -> Runner:
    def run(waveforms: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return frames(fbank(torch.from_numpy(waveforms)))
    return run


def _numpy_runner(graph: object) -> Runner:
    """Arrays (numpy, or CPU tensors) in, a tensor of the graph's output back."""
    def run(*arrays):  # type: ignore[no-untyped-def]
        return torch.from_numpy(graph(*arrays))  # type: ignore[operator]
    return run


def _torch_responses_runner(model: nn.Module) -> Callable[..., torch.Tensor]:
    def run(maxima: np.ndarray, minima: np.ndarray, statistics: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return model.forward_pooled(torch.from_numpy(maxima), torch.from_numpy(minima),
                                        torch.from_numpy(statistics))
    return run
