"""ONNX export of the native torch modules and onnxruntime sessions to run them.

``onnx`` / ``onnxruntime`` are optional: imported only when ``backend="onnx"`` is asked for.
Exported graphs are cached under ``$STREAMER_ONNX_CACHE`` (default
``~/.cache/streamer/onnx``), keyed by a hash of the checkpoint bytes and of this package's
source, so a process exports each model once and later processes reuse the file.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from streamer.errors import ModelLoadError

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent
_OPSET = 17


def _import_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(
            "backend='onnx' needs the onnx and onnxruntime packages: "
            "`pip install onnx onnxruntime` (or `pip install streamer[onnx]`), "
            "or use backend='torch'") from exc
    return onnxruntime


def cache_dir() -> Path:
    """Folder for exported graphs (created on demand; a temp folder if not writable)."""
    folder = Path(os.environ.get("STREAMER_ONNX_CACHE", "~/.cache/streamer/onnx")).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / "streamer-onnx"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def graph_key(checkpoint: Path, kind: str) -> str:
    """Hash of the checkpoint, the export kind and the code that defines the graph."""
    digest = hashlib.sha256(kind.encode())
    with checkpoint.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    for source in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:24]


def export(module: nn.Module, inputs: dict[str, torch.Tensor], path: Path,
           dynamic_axes: dict[str, dict[int, str]],
           edit: Callable[[Any], None] | None = None) -> None:
    """Export ``module(*inputs) -> output`` (named inputs, one output) with dynamic axes;
    ``edit`` changes the exported ``onnx.ModelProto`` in place before it is saved."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    module = module.eval().cpu()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, tuple(inputs.values()), str(tmp), dynamo=False, opset_version=_OPSET,
                input_names=list(inputs), output_names=["output"], dynamic_axes=dynamic_axes)
        except Exception as exc:  # exporter failures come in many types
            tmp.unlink(missing_ok=True)
            detail = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise ModelLoadError(f"ONNX export failed ({type(exc).__name__}: {detail}); "
                                 "use backend='torch'") from exc
    if edit is not None:
        import onnx

        graph = onnx.load(str(tmp))
        edit(graph)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    logger.info("exported ONNX graph %s", path)


class OnnxRunner:
    """``np.ndarray inputs (in the graph's order) -> np.ndarray`` through onnxruntime."""

    def __init__(self, path: Path, device: torch.device) -> None:
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        # no busy-waiting worker threads: on a small shared machine they steal the core
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning("onnxruntime has no CUDA provider here; running ONNX on CPU")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.path = path
        self.providers = providers
        self.input_names = [node.name for node in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(array) for name, array in zip(self.input_names, arrays)}
        return self.session.run(None, feeds)[0]


def onnx_runner(module: nn.Module, checkpoint: Path, kind: str, inputs: dict[str, torch.Tensor],
                dynamic_axes: dict[str, dict[int, str]], device: torch.device,
                edit: Callable[[Any], None] | None = None) -> OnnxRunner:
    """Export ``module`` once (cached, keyed by checkpoint and ``kind``) and open it with
    onnxruntime. ``inputs``: named example inputs; ``dynamic_axes``: as for torch.onnx;
    ``edit``: see :func:`export` (``kind`` must change whenever it does)."""
    _import_onnxruntime()
    path = cache_dir() / f"{kind}-{graph_key(checkpoint, kind)}.onnx"
    if not path.is_file():
        export(module, inputs, path, dynamic_axes, edit)
    else:
        logger.debug("reusing ONNX graph %s", path)
    return OnnxRunner(path, device)
