"""Where the tests find their data: the repository, ``tests/data`` and ``../shared`` (the
evaluation sets and parity outputs beside the checkout; tests that need it skip when it is
absent)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
SHARED = REPO.parent / "shared"
EVAL = SHARED / "eval"
SAMPLE = EVAL / "sample.wav"
