"""The container of a ``torch.save`` file, checked and read without ``torch.load``.

``torch.load`` hands a zip archive that holds TorchScript parts (``code/``,
``constants.pkl``) to ``torch.jit.load``, which runs the archive's code before any
unpickler is asked, whatever ``pickle_module`` or ``weights_only`` say. So a checkpoint's
structure is checked here, with :mod:`zipfile`, and a zip checkpoint is also *read* here:
its ``data.pkl`` through the caller's restricted unpickler, each tensor's bytes straight
from its ``data/<key>`` entry. torch's own zip reader never parses the file, so an archive
that torch would see differently from :mod:`zipfile` cannot slip through either.

Accepted: the zip format of ``torch.save`` (one top folder holding ``data.pkl``,
``data/<key>`` tensor bytes and a few small marker files), or the legacy format (a pickle
that starts with torch's magic number, read by ``torch.load``, whose legacy reader never
dispatches to TorchScript). Everything else is refused with a :class:`ModelLoadError`.
"""
from __future__ import annotations

import io
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from streamer.errors import ModelLoadError

#: What ``torch.load`` looks at to choose its zip reader.
ZIP_MAGIC = b"PK\x03\x04"
#: The first pickle of the legacy format, at every pickle protocol torch may have used.
LEGACY_HEADS = tuple(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=p) for p in range(2, 6))
#: Small files ``torch.save`` writes next to ``data.pkl`` (versions 1.6 to 2.x).
MARKER_ENTRIES = frozenset({"version", ".data/version", "byteorder", ".format_version",
                            ".storage_alignment", ".data/serialization_id"})
_STORAGE_ENTRY = re.compile(r"data/[0-9A-Za-z_]+")


@dataclass(frozen=True)
class StorageType:
    """What a pickled ``torch.<Kind>Storage`` global stands for: the dtype of its bytes."""

    dtype: torch.dtype


def storage_type(name: str) -> StorageType | None:
    """The :class:`StorageType` of ``torch.<name>``, or None if it is not a storage class."""
    if name == "UntypedStorage":
        return StorageType(torch.uint8)
    with warnings.catch_warnings():  # the legacy typed storages are deprecated
        warnings.simplefilter("ignore")
        dtype = getattr(getattr(torch, name, None), "dtype", None)
    return StorageType(dtype) if isinstance(dtype, torch.dtype) else None


def container_kind(path: Path, file: BinaryIO) -> str:
    """``"zip"`` or ``"legacy"`` by the file's first bytes; raises
    :class:`ModelLoadError` for anything else. A zip's entries are checked by
    :func:`load_zip`, which refuses a TorchScript archive before reading anything."""
    head = file.read(64)
    file.seek(0)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_HEADS):
        return "legacy"
    if head.lstrip().startswith((b"{", b"<", b"version")) or b"git-lfs" in head:
        raise ModelLoadError(
            f"{path} is not a PyTorch checkpoint (it looks like a text file, e.g. a "
            "Git LFS pointer or an HTML error page): download the real "
            "pytorch_model.bin from the model page and pass its path")
    raise ModelLoadError(
        f"{path} could not be read as a PyTorch checkpoint: it is neither the zip format "
        "of torch.save nor its legacy pickle format (it may be truncated or not a pyannote "
        "pytorch_model.bin)")


def _archive(path: Path, file: BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ModelLoadError(
            f"{path} could not be read as a PyTorch checkpoint (broken zip archive: {exc}); "
            "it may be truncated") from None


def check_zip(path: Path, file: BinaryIO) -> str:
    """Check that a zip holds a plain ``torch.save`` checkpoint; returns its top folder."""
    with _archive(path, file) as archive:
        names = archive.namelist()
    file.seek(0)
    refuse = f"refusing to load {path}:"
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{refuse} its zip archive names an entry twice")
    roots = {name.partition("/")[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise ModelLoadError(
            f"{refuse} a torch.save checkpoint keeps all its entries in one top folder, "
            f"this zip has {', '.join(sorted(roots)[:3])}")
    inner = [name.partition("/")[2] for name in names]
    script = [n for n in inner if n == "constants.pkl" or n.startswith(("code/", "constants/"))]
    if script:
        raise ModelLoadError(
            f"{refuse} it is a TorchScript archive (it holds {script[0]}), whose code would "
            "run when torch loads it; pass the pytorch_model.bin of a pyannote model "
            "(written by torch.save), not an exported or scripted model")
    unknown = [n for n in inner if n != "data.pkl" and n not in MARKER_ENTRIES
               and not _STORAGE_ENTRY.fullmatch(n)]
    if unknown:
        raise ModelLoadError(
            f"{refuse} its entry {unknown[0]!r} is not part of a torch.save checkpoint")
    if "data.pkl" not in inner:
        raise ModelLoadError(f"{refuse} the zip archive has no data.pkl: it is not a "
                             "torch.save checkpoint")
    return roots.pop()


def load_zip(path: Path, file: BinaryIO, unpickler: type[pickle.Unpickler]) -> Any:
    """Unpickle a zip checkpoint with ``unpickler``, tensors on the CPU, once
    :func:`check_zip` has found it a plain ``torch.save`` file."""
    root = check_zip(path, file)
    with _archive(path, file) as archive:
        names = set(archive.namelist())
        byteorder = (archive.read(f"{root}/byteorder").decode("ascii", "replace")
                     if f"{root}/byteorder" in names else "little")
        if byteorder not in ("little", "big"):
            raise ModelLoadError(f"refusing to load {path}: unknown byte order {byteorder!r}")
        storages: dict[str, torch.storage.TypedStorage] = {}

        def persistent_load(saved_id: Any) -> torch.storage.TypedStorage:
            storage, key, numel = _storage_id(saved_id)
            if key not in storages:
                nbytes = numel * torch.empty(0, dtype=storage.dtype).element_size()
                entry = f"{root}/data/{key}"
                if entry not in names:
                    raise pickle.UnpicklingError(f"tensor data {entry} is missing")
                size = archive.getinfo(entry).file_size
                if size != nbytes:
                    raise pickle.UnpicklingError(
                        f"tensor data {entry} holds {size} bytes, its tensor needs {nbytes}")
                data = torch.UntypedStorage(0)
                if nbytes:
                    data = torch.UntypedStorage.from_buffer(archive.read(entry), "little",
                                                            dtype=torch.uint8)
                if byteorder != sys.byteorder:
                    data.byteswap(storage.dtype)
                storages[key] = torch.storage.TypedStorage(wrap_storage=data,
                                                           dtype=storage.dtype, _internal=True)
            return storages[key]

        reader = unpickler(io.BytesIO(archive.read(f"{root}/data.pkl")))
        reader.persistent_load = persistent_load  # type: ignore[method-assign]
        return reader.load()


def _storage_id(saved_id: Any) -> tuple[StorageType, str, int]:
    """Check a persistent id of the zip format: ``("storage", type, key, location, numel)``."""
    if not (isinstance(saved_id, tuple) and len(saved_id) == 5):
        raise pickle.UnpicklingError(f"unexpected persistent id {str(saved_id)[:80]}")
    kind, storage, key, _location, numel = saved_id
    if isinstance(kind, bytes):
        kind = kind.decode("ascii", "replace")
    if (kind != "storage" or not isinstance(storage, StorageType) or not isinstance(key, str)
            or isinstance(numel, bool) or not isinstance(numel, int) or numel < 0):
        raise pickle.UnpicklingError(f"unexpected persistent id {str(saved_id)[:80]}")
    return storage, key, numel
