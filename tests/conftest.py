"""Shared test set-up."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: faster than two on a small, shared machine (no spin contention),
    and what the server and CLI use too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test module's own cache of exported ONNX graphs (see ``onnx_cache_env``)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def onnx_cache_env(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Exports go to ``onnx_cache``, never to the user's cache."""
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(onnx_cache))
    return onnx_cache
