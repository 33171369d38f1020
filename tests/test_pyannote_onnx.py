"""ONNX backend: exported graphs run with onnxruntime and match the torch modules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.models.pyannote import load_embedding, load_segmentation
from streamer.models.pyannote.onnx import cache_dir
from tests.checkpoints import write_checkpoint

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("onnx_cache_env")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: write_checkpoint(root / kind / "pytorch_model.bin", kind, seed=7)
            for kind in ("segmentation-3.0", "segmentation-2", "wespeaker", "xvector")}


def _audio(batch: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(5)
    return (0.05 * rng.standard_normal((batch, int(seconds * 16000)))).astype(np.float32)


@pytest.mark.parametrize("kind", ["segmentation-3.0", "segmentation-2"])
def test_segmentation_onnx_matches_torch(checkpoints: dict[str, Path], kind: str) -> None:
    torch_model = load_segmentation(checkpoints[kind])
    onnx_model = load_segmentation(checkpoints[kind], backend="onnx")
    assert onnx_model.backend == "onnx" and onnx_model.frames == torch_model.frames
    for batch, seconds in [(1, torch_model.chunk_duration), (3, 2.5)]:  # dynamic batch/length
        audio = _audio(batch, seconds)
        np.testing.assert_allclose(onnx_model.raw(audio), torch_model.raw(audio), atol=1e-4)
        np.testing.assert_allclose(onnx_model(audio), torch_model(audio), atol=1e-4)
    # the graph after the filterbank (streams reuse the filterbank's work): dynamic batch too
    audio = _audio(2, torch_model.chunk_duration)
    caches = [onnx_model.response_cache() for _ in audio]
    outputs = [cache.update(row, 0) for cache, row in zip(caches, audio)]
    stacked = [np.stack(arrays) for arrays in zip(*outputs)]  # maxima, minima, statistics
    np.testing.assert_allclose(onnx_model.from_responses(*stacked, raw=True),
                               torch_model.raw(audio), atol=1e-4)
    assert list(cache_dir().glob("segmentation-pooled-*.onnx"))  # exported and cached


@pytest.mark.parametrize("kind", ["wespeaker", "xvector"])
def test_embedding_onnx_matches_torch(checkpoints: dict[str, Path], kind: str) -> None:
    torch_model = load_embedding(checkpoints[kind])
    onnx_model = load_embedding(checkpoints[kind], backend="onnx")
    assert onnx_model.dimension == torch_model.dimension
    for batch, seconds in [(1, 10.0), (2, 4.0)]:
        audio = _audio(batch, seconds)
        weights = np.random.default_rng(1).uniform(0, 1, (batch, 200)).astype(np.float32)
        scale = np.abs(torch_model(audio)).max()
        np.testing.assert_allclose(onnx_model(audio), torch_model(audio), atol=1e-4 * scale)
        np.testing.assert_allclose(onnx_model(audio, weights), torch_model(audio, weights),
                                   atol=1e-4 * scale)


def test_onnx_resnet_runs_only_where_the_weights_matter(checkpoints: dict[str, Path]) -> None:
    torch_model = load_embedding(checkpoints["wespeaker"])
    onnx_model = load_embedding(checkpoints["wespeaker"], backend="onnx")
    assert onnx_model.crop_threshold is not None
    audio = _audio(1, 10.0)
    weights = np.full((1, 589), 1e-8, np.float32)
    weights[0, 450:] = 1.0
    spans = []
    trunk_span = onnx_model._module.trunk_span
    onnx_model._module.trunk_span = lambda w, a, b, **kw: (spans.append((a, b)),
                                                           trunk_span(w, a, b, **kw))[1]
    cropped = onnx_model(audio, weights)
    assert len(spans) == 1
    scale = np.abs(torch_model(audio, weights)).max()
    np.testing.assert_allclose(cropped, torch_model(audio, weights), atol=1e-4 * scale)


def test_exported_graph_is_cached_and_reused(checkpoints: dict[str, Path], onnx_cache: Path) -> None:
    first = load_embedding(checkpoints["xvector"], backend="onnx")
    graphs = sorted(onnx_cache.glob("embedding-*.onnx"))
    assert graphs and all(p.stat().st_size > 0 for p in graphs)
    stamps = {p: p.stat().st_mtime_ns for p in graphs}
    second = load_embedding(checkpoints["xvector"], backend="onnx")
    assert {p: p.stat().st_mtime_ns for p in onnx_cache.glob("embedding-*.onnx")} == stamps
    audio = _audio(1, 3.0)
    np.testing.assert_array_equal(first(audio), second(audio))
    assert not list(onnx_cache.glob("*.tmp"))
