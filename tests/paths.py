"""Where the tests find their data: the repository, ``tests/data`` and ``../shared`` (the
evaluation sets and parity outputs beside the checkout; tests that need it skip when it is
absent)."""
from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED = REPO.parent / "shared"
EVAL = SHARED / "eval"
SAMPLE = EVAL / "sample.wav"


@contextmanager
def script_module(name: str) -> Iterator[ModuleType]:
    """``scripts/NAME.py`` imported as a module (registered while in use: dataclasses
    look their module up)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script",
                                                  REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]
