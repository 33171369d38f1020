"""Where and how the pyannote networks run: the device, the call that runs a network
on it, cuDNN's TF32 switch, and the numeric precision."""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

import numpy as np
import torch

from streamer.errors import ConfigError

logger = logging.getLogger(__name__)

#: ``np.ndarray (batch, samples) -> torch.Tensor`` (raw output or trunk frames).
Runner = Callable[[np.ndarray], torch.Tensor]

def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` (or ``"cuda:N"``) or ``"auto"`` (cuda when available)."""
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        return torch.device(name)
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")


def torch_runner(function: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> Runner:
    """Run ``function`` under inference mode on ``device``."""
    def run(waveforms: np.ndarray) -> torch.Tensor:
        inputs = torch.from_numpy(waveforms).to(device)
        with torch.inference_mode():
            return function(inputs)
    return run


def cudnn_tf32(device: torch.device, allow: bool) -> contextlib.AbstractContextManager:
    """Set cuDNN's TF32 shortcut for the duration of a GPU call.

    Off, GPU outputs match the CPU's closely; on, they drift (powerset log-probabilities
    more than ResNet embeddings) in exchange for faster convolutions. The README's
    benchmark table has the figures (``scripts/bench_models.py --device cuda
    --compare-cpu``).
    """
    return _cudnn_setting("allow_tf32", allow, device.type == "cuda")


def cudnn_autotuned(enabled: bool) -> contextlib.AbstractContextManager:
    """Let cuDNN time its algorithms for each new input shape (and keep the fastest) for
    the duration of a call; worth it only for calls of a few fixed shapes."""
    return _cudnn_setting("benchmark", True, enabled)


@contextlib.contextmanager
def _cudnn_setting(name: str, value: bool, active: bool) -> Iterator[None]:
    """``torch.backends.cudnn.<name> = value`` within the block (if ``active``), restored
    after it."""
    if not active:
        yield
        return
    previous = getattr(torch.backends.cudnn, name)
    setattr(torch.backends.cudnn, name, value)
    try:
        yield
    finally:
        setattr(torch.backends.cudnn, name, previous)


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, backend: str) -> None:
    """Validate an embedding precision for ``backend`` (:class:`ConfigError`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and backend != "torch":
        raise ConfigError("precision 'bf16' runs with the torch backend only; "
                          f"got backend {backend!r}")


def warn_slow_bf16(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
        logger.warning("this CPU has no AVX-512 BF16/AMX instructions: bf16 embeddings will be "
                       "slower than fp32 here")


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False
