"""Shared test set-up."""
from __future__ import annotations

import os
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


@pytest.fixture(autouse=True, scope="session")
def _session_onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The embedded preset exports GE2E to ONNX by default: the front ends, servers and
    CLIs the tests start export into a cache of the session, never the user's."""
    previous = os.environ.get("STREAMER_ONNX_CACHE")
    os.environ["STREAMER_ONNX_CACHE"] = str(tmp_path_factory.mktemp("onnx-session"))
    yield
    if previous is None:
        os.environ.pop("STREAMER_ONNX_CACHE", None)
    else:
        os.environ["STREAMER_ONNX_CACHE"] = previous


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test module's own cache of exported ONNX graphs (see ``onnx_cache_env``)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def onnx_cache_env(onnx_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Exports go to ``onnx_cache``, never to the user's cache."""
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(onnx_cache))
    return onnx_cache
