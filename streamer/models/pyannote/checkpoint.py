"""Safe loading of pyannote.audio checkpoints (``pytorch_model.bin``).

The published checkpoints are PyTorch Lightning checkpoints: a pickle holding the
``state_dict``, the ``hyper_parameters`` and a ``pyannote.audio`` entry whose
``specifications`` are instances of pyannote classes. Unpickling them with the standard
unpickler would import pyannote.audio (which we do not need) and would run whatever code a
tampered file asks for. :class:`RestrictedUnpickler` resolves only an allow-list of
harmless torch/numpy/collections rebuild functions and replaces every pyannote / lightning
class with an inert :class:`Stub` that just records its constructor arguments and state.
Anything else (``os.system``, ``subprocess.Popen``, ``builtins.eval`` ...) is refused.
The file's container is checked (and a zip read) by :mod:`.torchfile` so that a
TorchScript archive never reaches ``torch.jit.load``; weights that are not finite are
refused too (they would silently give no speech at all).
"""
from __future__ import annotations

import logging
import pickle
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from streamer.errors import ModelLoadError
from streamer.models.pyannote.torchfile import container_kind, load_zip, storage_type

logger = logging.getLogger(__name__)

#: Module prefixes whose classes are replaced by inert stubs.
STUBBED_PREFIXES = (
    "pyannote.",
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "torch.torch_version",
    "omegaconf.",
)

#: Exact globals that may be resolved to the real object (all are pure data rebuilders).
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): __import__("_codecs").encode,
    # harmless value types seen in Lightning checkpoints' callback / logger states
    ("pathlib", "PosixPath"): __import__("pathlib").PurePosixPath,
    ("pathlib", "WindowsPath"): __import__("pathlib").PureWindowsPath,
    ("pathlib", "PurePosixPath"): __import__("pathlib").PurePosixPath,
    ("pathlib", "PureWindowsPath"): __import__("pathlib").PureWindowsPath,
    ("datetime", "datetime"): __import__("datetime").datetime,
    ("datetime", "timedelta"): __import__("datetime").timedelta,
    ("argparse", "Namespace"): __import__("argparse").Namespace,
}

_NUMPY_GLOBALS = {
    "numpy": ("ndarray", "dtype"),
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
}
for _module, _names in _NUMPY_GLOBALS.items():
    for _name in _names:
        ALLOWED_GLOBALS[(_module, _name)] = ("numpy-lazy", _name)


class RefusedGlobalError(pickle.UnpicklingError):
    """The pickle references a global that is not on the allow-list."""


class Stub:
    """Inert stand-in for a pickled class: records arguments and state, runs nothing."""

    __stub_module__ = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "kwargs", kwargs)
        object.__setattr__(obj, "state", {})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - nothing to do
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        # merge: dict subclasses (Lightning's AttributeDict) get SETITEMS before BUILD
        self.state.update(state if isinstance(state, dict) else {"_": state})

    def __setitem__(self, key: Any, value: Any) -> None:
        self.state[key] = value

    def append(self, value: Any) -> None:
        self.state.setdefault("_items", []).append(value)

    def extend(self, values: Any) -> None:
        self.state.setdefault("_items", []).extend(values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default) if isinstance(self.state, dict) else default

    @property
    def value(self) -> Any:
        """First constructor argument (the value of a pickled enum member)."""
        return self.args[0] if self.args else None

    def __repr__(self) -> str:
        return f"Stub({self.__stub_module__}.{type(self).__name__}, args={self.args!r})"


_STUB_CACHE: dict[tuple[str, str], type] = {}


def stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUB_CACHE:
        _STUB_CACHE[key] = type(name, (Stub,), {"__stub_module__": module})
    return _STUB_CACHE[key]


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` restricted to stub classes (old dataclass pickles)."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise RefusedGlobalError(f"refusing to reconstruct {cls!r}")
    return cls.__new__(cls)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and stubs pyannote classes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        if module.startswith(STUBBED_PREFIXES) or module in {"pyannote", "lightning"}:
            return stub_class(module, name)
        if module == "torch" and name.endswith("Storage") and storage_type(name):
            return storage_type(name)  # which dtype a tensor's bytes hold
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedGlobalError(
                f"refusing to load global {module}.{name}: it is not on the allow-list of "
                "a pyannote checkpoint (the file may be corrupt or malicious)"
            )
        if isinstance(allowed, tuple) and allowed[0] == "numpy-lazy":
            return super().find_class(module, name)
        return allowed


class _RestrictedPickleModule:
    """Stand-in for the ``pickle`` module passed to :func:`torch.load`."""

    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file: BinaryIO, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle_module = _RestrictedPickleModule


@dataclass
class Checkpoint:
    """What a pyannote checkpoint holds, with pyannote classes reduced to plain data.

    Attributes:
        path: Where the checkpoint was read from.
        state_dict: Parameter name -> tensor.
        hyper_parameters: The model's saved constructor arguments.
        architecture: ``"module.Class"`` of the pyannote model, or ``""`` when absent.
        specifications: Task specifications as a plain dict (``problem`` and
            ``resolution`` as ints, ``duration``, ``classes``, ``powerset_max_classes``...),
            empty when absent.
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    architecture: str = ""
    specifications: dict[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.architecture.rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """Turn stubs (enum members, dataclasses) into plain Python values."""
    if isinstance(value, Stub):
        if value.args and not value.state:
            return _plain(value.value)
        return {k: _plain(v) for k, v in value.state.items()} if isinstance(value.state, dict) else {}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a pyannote checkpoint safely; raise :class:`ModelLoadError` on anything else."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ModelLoadError(f"{path} is not a file: pass a pytorch_model.bin")
        with path.open("rb") as file:
            raw = _unpickle(path, file)
    except PermissionError:
        raise ModelLoadError(f"{path}: permission denied") from None
    except (FileNotFoundError, NotADirectoryError):
        raise ModelLoadError(f"checkpoint file {path} does not exist") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        raise ModelLoadError(
            f"{path} is not a pyannote checkpoint: it has no 'state_dict' entry (expected the "
            "pytorch_model.bin of a pyannote model such as pyannote/segmentation-3.0)"
        )
    meta = raw.get("pyannote.audio") or {}
    if not isinstance(meta, dict):
        meta = {}
    arch = meta.get("architecture") or {}
    architecture = ""
    if isinstance(arch, dict) and arch.get("class"):
        architecture = f"{arch.get('module', '')}.{arch['class']}".lstrip(".")
    specs = _plain(meta.get("specifications"))
    if isinstance(specs, (list, tuple)):  # multi-task models: use the first task
        specs = specs[0] if specs else {}
    hparams = _plain(raw.get("hyper_parameters") or {})
    state_dict = {k: v for k, v in raw["state_dict"].items() if isinstance(v, torch.Tensor)}
    _check_finite(path, state_dict)
    logger.debug("read %s: architecture=%s, %d tensors", path, architecture or "?", len(state_dict))
    return Checkpoint(path, state_dict, hparams if isinstance(hparams, dict) else {},
                      architecture, specs if isinstance(specs, dict) else {})


def _unpickle(path: Path, file: BinaryIO) -> Any:
    """The checkpoint's pickled object, read through :class:`RestrictedUnpickler`."""
    kind = container_kind(path, file)
    try:
        if kind == "zip":  # checked entry by entry (TorchScript refused), read without torch
            return load_zip(path, file, RestrictedUnpickler)
        # torch's legacy reader only unpickles (with the module given), it runs no code
        return torch.load(file, map_location="cpu", pickle_module=restricted_pickle_module,
                          weights_only=False)
    except RefusedGlobalError as exc:
        raise ModelLoadError(f"refusing to load {path}: {exc}") from exc
    except ModelLoadError:
        raise
    except Exception as exc:  # RuntimeError, EOFError, UnpicklingError ... on corrupt files
        raise ModelLoadError(
            f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
            "it may be truncated or not a pyannote pytorch_model.bin"
        ) from exc


def _check_finite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    for name, tensor in state_dict.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(
                torch.isfinite(tensor).all()):
            raise ModelLoadError(
                f"refusing to load {path}: its tensor {name!r} holds NaN or infinite "
                "values (a corrupt file or a diverged training run); such a model gives "
                "no speech at all")
