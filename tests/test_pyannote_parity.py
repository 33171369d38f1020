"""Parity with pyannote.audio 3.1 on the shared fixtures (fixed random weights, real speech).

Each folder of ``../shared/parity`` holds a checkpoint in the published layout and the
outputs pyannote.audio itself computed; our loader must match every array within 1e-4,
with the torch and the ONNX backends.
"""
from __future__ import annotations

import numpy as np
import pytest

from streamer.models.base import EmbeddingModel, SegmentationModel
from streamer.models.pyannote import load_embedding, load_segmentation
from tests.paths import SHARED

PARITY = SHARED / "parity"
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(
    not PARITY.is_dir(), reason=f"parity fixtures not found: {PARITY} (the repo's sibling "
    "folder ../shared/parity) is absent on this machine")

BACKENDS = ["torch", pytest.param("onnx", marks=pytest.mark.filterwarnings("ignore"))]


def _reference(name: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / name / "reference.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(autouse=True)
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(tmp_path_factory.getbasetemp() / "onnx"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_segmentation_3_powerset_parity(backend: str) -> None:
    ref = _reference("segmentation-3.0")
    model = load_segmentation(PARITY / "segmentation-3.0", backend=backend)
    assert isinstance(model, SegmentationModel)
    assert model.powerset and model.num_speakers == 3 and model.chunk_duration == 10.0
    raw = model.raw(ref["input"])
    assert raw.shape == ref["output"].shape == (2, 589, 7)
    np.testing.assert_allclose(raw, ref["output"], atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(model.mapping, ref["mapping"])
    soft = model(ref["input"][:, 0])  # the interface: (batch, samples) -> soft activations
    np.testing.assert_allclose(soft, ref["multilabel_soft"], atol=TOLERANCE, rtol=0)
    hard = model.activations(ref["input"][:, 0], hard=True)
    np.testing.assert_allclose(hard, ref["multilabel_hard"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(model.to_multilabel(raw, hard=True), ref["multilabel_hard"],
                               atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segmentation_2_multilabel_parity(backend: str) -> None:
    ref = _reference("segmentation-2")
    model = load_segmentation(PARITY / "segmentation-2" / "pytorch_model.bin", backend=backend)
    assert not model.powerset and model.mapping is None
    assert model.num_speakers == 4 and model.chunk_duration == 5.0
    out = model(ref["input"][:, 0])
    assert out.shape == ref["output"].shape == (2, 293, 4)
    np.testing.assert_allclose(out, ref["output"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["segmentation-3.0", "segmentation-2"])
def test_frame_timing_matches_notes(name: str) -> None:
    import json

    notes = json.loads((PARITY / name / "notes.json").read_text())
    model = load_segmentation(PARITY / name)
    assert model.frames.start == pytest.approx(notes["frames"]["start"])
    assert model.frames.step == pytest.approx(notes["frames"]["step"], rel=1e-12)
    assert model.frames.duration == pytest.approx(notes["frames"]["duration"], rel=1e-12)
    assert model.num_frames(round(model.chunk_duration * 16000)) == notes["num_frames"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,dimension", [("wespeaker-resnet34", 256),
                                            ("xvector-sincnet", 512)])
def test_embedding_parity(name: str, dimension: int, backend: str) -> None:
    ref = _reference(name)
    model = load_embedding(PARITY / name, backend=backend)
    assert isinstance(model, EmbeddingModel)
    assert model.dimension == dimension and model.sample_rate == 16000
    unweighted = model(ref["input"][:, 0])
    np.testing.assert_allclose(unweighted, ref["output_unweighted"], atol=TOLERANCE, rtol=0)
    weighted = model(ref["input"][:, 0], ref["weights"])
    np.testing.assert_allclose(weighted, ref["output"], atol=TOLERANCE, rtol=0)
    # also tight relative to the scale of the outputs (x-vectors here are ~0.03)
    scale = np.abs(ref["output"]).max()
    assert np.abs(weighted - ref["output"]).max() < 1e-3 * scale
    # the weights matter: the weighted and unweighted embeddings differ
    assert np.abs(weighted - unweighted).max() > 10 * TOLERANCE


def test_repeated_chunk_runs_trunk_once_and_matches_reference() -> None:
    """The front end repeats a buffer once per local speaker: same results, one trunk pass."""
    ref = _reference("wespeaker-resnet34")
    model = load_embedding(PARITY / "wespeaker-resnet34")
    calls: list[int] = []
    run = model._run
    model._run = lambda batch: (calls.append(batch.shape[0]), run(batch))[1]
    chunk = ref["input"][1, 0]
    batch = np.stack([chunk, chunk, chunk])
    weights = np.stack([ref["weights"][1], np.ones(589, np.float32), ref["weights"][1]])
    out = model(batch, weights)
    assert calls == [1]
    np.testing.assert_allclose(out[0], ref["output"][1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out[2], ref["output"][1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(out[1], ref["output_unweighted"][1], atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["segmentation-3.0", "segmentation-2"])
def test_streaming_filter_reuse_parity(name: str, backend: str) -> None:
    """A rolling buffer over the two reference inputs played back to back, moved by 0.5 s:
    the steps that reuse the previous step's filterbank work give the reference outputs
    where the buffer is a reference input, and the full computation's outputs elsewhere."""
    ref = _reference(name)
    model = load_segmentation(PARITY / name, backend=backend)
    assert model.reuses_filter_responses
    inputs = ref["input"][:, 0]
    size, hop = inputs.shape[1], 8000
    stream = np.concatenate(list(inputs))
    cache = model.response_cache()
    for position in range(0, stream.size - size + 1, hop):
        chunk = stream[position:position + size]
        inputs = cache.update(chunk, position)
        raw = model.from_responses(*(x[None] for x in inputs), raw=True)[0]
        if position % size == 0:
            # powerset log-probabilities, or the multilabel model's activations
            np.testing.assert_allclose(raw, ref["output"][position // size], atol=TOLERANCE,
                                       rtol=0)
        np.testing.assert_allclose(raw, model.raw(chunk[None])[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(model.from_responses(*(x[None] for x in inputs)),
                                   model(chunk[None]), atol=1e-5, rtol=0)
    steps = (stream.size - size) // hop + 1
    frames = (size - 251) // 10 + 1
    assert cache.computed_frames == frames + (steps - 1) * hop // 10
    assert cache.reused_frames == (steps - 1) * (frames - hop // 10)


def test_bf16_resnet_embeddings_near_reference() -> None:
    """The opt-in bf16 path is not exact; it stays within 1 % of the reference values and
    at cosine similarity > 0.9999 (what speaker matching looks at)."""
    ref = _reference("wespeaker-resnet34")
    model = load_embedding(PARITY / "wespeaker-resnet34", precision="bf16")
    weighted = model(ref["input"][:, 0], ref["weights"])
    scale = np.abs(ref["output"]).max()
    assert np.abs(weighted - ref["output"]).max() < 1e-2 * scale
    cosine = (weighted * ref["output"]).sum(1) / (
        np.linalg.norm(weighted, axis=1) * np.linalg.norm(ref["output"], axis=1))
    assert cosine.min() > 0.9999


def test_resnet34_cropped_to_active_frames_matches_the_whole_chunk() -> None:
    """With the real ResNet34 layout (receptive field of 225 fbank frames): the trunk over
    part of a chunk gives the same frames, and embeddings of speakers active in part of a
    chunk are those of the whole chunk."""
    import torch

    ref = _reference("wespeaker-resnet34")
    model = load_embedding(PARITY / "wespeaker-resnet34")
    audio = torch.from_numpy(ref["input"][:1, 0])
    with torch.inference_mode():
        whole = model._module.trunk(audio)
        for start, stop in [(0, 20), (30, 70), (100, 125)]:
            torch.testing.assert_close(model._module.trunk_span(audio, start, stop),
                                       whole[..., start:stop], atol=1e-6, rtol=0)
    weights = np.full((2, 589), 1e-8, np.float32)
    weights[0, -177:] = ref["weights"][0, -177:]  # the last 3 s
    weights[1, :118] = ref["weights"][1, :118]  # the first 2 s
    cropped = model(ref["input"][:, 0], weights)
    model.crop_threshold = None
    full = model(ref["input"][:, 0], weights)
    np.testing.assert_allclose(cropped, full, atol=1e-5 * np.abs(full).max(), rtol=0)
