"""Behaviour of the pyannote models behind the engine's interfaces (small random weights)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamer.models.base import EmbeddingModel, SegmentationModel
from streamer.models.pyannote import load_embedding, load_segmentation
from streamer.models.pyannote.fbank import KaldiFbank
from streamer.models.pyannote.powerset import powerset_mapping, to_multilabel
from streamer.models.pyannote.device import resolve_device
from tests.checkpoints import write_checkpoint

RATE = 16000


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("models")
    path = {kind: write_checkpoint(root / kind / "pytorch_model.bin", kind)
            for kind in ("segmentation-3.0", "segmentation-2", "wespeaker", "xvector")}
    return {"seg3": load_segmentation(path["segmentation-3.0"]),
            "seg2": load_segmentation(path["segmentation-2"]),
            "wespeaker": load_embedding(path["wespeaker"]),
            "xvector": load_embedding(path["xvector"])}


def _speech_like(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = np.sin(2 * np.pi * rng.uniform(100, 300, (batch, 1)) * t)
    return (0.1 * tone + 0.02 * rng.standard_normal((batch, t.size))).astype(np.float32)


@pytest.mark.parametrize("name,speakers,powerset", [("seg3", 3, True), ("seg2", 4, False)])
def test_segmentation_interface(models: dict, name: str, speakers: int, powerset: bool) -> None:
    model = models[name]
    assert isinstance(model, SegmentationModel)
    assert model.num_speakers == speakers and model.powerset is powerset
    samples = int(model.chunk_duration * RATE)
    out = model(_speech_like(2, model.chunk_duration))
    assert out.dtype == np.float32 and out.shape == (2, model.num_frames(samples), speakers)
    assert out.min() >= 0.0 and out.max() <= 1.0
    # frame timing covers the chunk: frames * step == chunk duration
    assert model.num_frames(samples) * model.frames.step == pytest.approx(model.chunk_duration)
    assert model.receptive_field.step == pytest.approx(270 / RATE)


def test_powerset_soft_activations_are_probabilities(models: dict) -> None:
    model = models["seg3"]
    raw = model.raw(_speech_like(1, 10.0))
    probs = np.exp(raw)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    soft = model.to_multilabel(raw)
    np.testing.assert_allclose(soft, probs @ model.mapping, atol=1e-6)
    hard = model.to_multilabel(raw, hard=True)
    assert set(np.unique(hard)) <= {0.0, 1.0} and hard.sum(-1).max() <= 2


def test_batching_does_not_change_results(models: dict) -> None:
    chunks = _speech_like(3, 10.0, seed=1)
    seg = models["seg3"]
    np.testing.assert_allclose(seg(chunks)[1:2], seg(chunks[1:2]), atol=1e-5)
    emb = models["wespeaker"]
    np.testing.assert_allclose(emb(chunks)[2:3], emb(chunks[2:3]), atol=1e-5)


@pytest.mark.parametrize("name", ["wespeaker", "xvector"])
def test_embedding_weights(models: dict, name: str) -> None:
    model = models[name]
    assert isinstance(model, EmbeddingModel)
    chunks = _speech_like(2, 10.0, seed=2)
    plain = model(chunks)
    assert plain.shape == (2, model.dimension) and plain.dtype == np.float32
    ones = model(chunks, np.ones((2, 589), np.float32))
    np.testing.assert_allclose(ones, plain, atol=1e-4)
    half = np.zeros((2, 589), np.float32)
    half[:, :294] = 1.0
    first_half = model(chunks, half)
    assert np.abs(first_half - plain).max() > 1e-4
    # scale-invariant, and any frame count is spread uniformly over the chunk
    np.testing.assert_allclose(model(chunks, 3.0 * half), first_half, atol=1e-4)
    coarse = np.repeat(np.array([[1.0, 0.0]], np.float32), 2, axis=0)
    frames = model.num_frames(chunks.shape[1])
    nearest = np.floor(np.arange(frames) * (2 / frames)).astype(int)  # source frame index
    fine = np.repeat((nearest == 0).astype(np.float32)[None], 2, axis=0)
    np.testing.assert_allclose(model(chunks, coarse), model(chunks, fine), atol=1e-5)


def test_repeated_chunks_share_one_trunk_pass(models: dict) -> None:
    model = models["xvector"]
    a, b = _speech_like(2, 10.0, seed=3)
    weights = np.random.default_rng(0).uniform(0.1, 1.0, (4, 100)).astype(np.float32)
    batched = model(np.stack([a, b, a, a]), weights)
    alone = np.concatenate([model(x[None], w[None]) for x, w in zip([a, b, a, a], weights)])
    np.testing.assert_allclose(batched, alone, atol=1e-4)


@pytest.mark.parametrize("name", ["seg3", "wespeaker"])
def test_bad_input_raises_value_error(models: dict, name: str) -> None:
    model = models[name]
    with pytest.raises(ValueError, match="batch, samples"):
        model(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model(np.full((1, 16000), np.nan, np.float32))
    with pytest.raises(ValueError, match="too short"):
        model(np.zeros((1, 100), np.float32))
    empty = model(np.zeros((0, 16000), np.float32))
    assert empty.shape[0] == 0


def test_embedding_weights_are_checked(models: dict) -> None:
    model = models["wespeaker"]
    chunks = _speech_like(2, 3.0)
    with pytest.raises(ValueError, match="weights must be"):
        model(chunks, np.ones((3, 10), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model(chunks, np.full((2, 10), np.nan, np.float32))


def test_powerset_mapping_order() -> None:
    mapping = powerset_mapping(3, 2)
    assert mapping.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                                [1, 1, 0], [1, 0, 1], [0, 1, 1]]
    assert powerset_mapping(4, 3).shape == (15, 4)
    log_probs = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.5, 0.05, 0.05]]))
    assert to_multilabel(log_probs, mapping, soft=False).tolist() == [[1, 1, 0]]
    np.testing.assert_allclose(to_multilabel(log_probs, mapping, soft=True).numpy(),
                               [[0.65, 0.65, 0.2]], atol=1e-6)
    with pytest.raises(ValueError):
        powerset_mapping(2, 3)


def test_fbank_is_mean_normalised_per_chunk() -> None:
    waveform = torch.from_numpy(_speech_like(2, 2.0))
    with torch.inference_mode():
        features = KaldiFbank()(waveform)
    assert features.shape == (2, 1 + (32000 - 400) // 160, 80)
    np.testing.assert_allclose(features.mean(dim=1).numpy(), 0.0, atol=1e-4)


def test_device_names() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError):
        resolve_device("gpu0")


def test_synthetic_checkpoint_rejects_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        write_checkpoint(tmp_path / "x.bin", "whisper")


def _rolling(cache, model, audio: np.ndarray, positions: list[int]) -> None:
    """Feed ``cache`` the chunks of ``audio`` at ``positions``; each matches the full path."""
    size = round(model.chunk_duration * RATE)
    for position in positions:
        chunk = audio[position:position + size]
        inputs = cache.update(chunk, position)
        np.testing.assert_allclose(model.from_responses(*(x[None] for x in inputs), raw=True),
                                   model.raw(chunk[None]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["seg3", "seg2"])
def test_filter_response_cache_reuses_the_previous_step(models: dict, name: str) -> None:
    model = models[name]
    assert model.reuses_filter_responses
    size = round(model.chunk_duration * RATE)
    frames = (size - 251) // 10 + 1
    audio = _speech_like(1, model.chunk_duration + 6.0, seed=3)[0] + 0.05  # with a DC offset
    cache = model.response_cache()
    positions = list(range(0, 12 * 4000 + 1, 4000))  # 13 chunks, past the store's wrap-around
    _rolling(cache, model, audio, positions)
    assert cache.computed_frames == frames + 12 * 400
    assert cache.reused_frames == 12 * (frames - 400)


def test_filter_response_cache_recomputes_whatever_does_not_continue(models: dict) -> None:
    model = models["seg3"]
    audio = _speech_like(1, 16.0, seed=5)[0]
    cache = model.response_cache()
    _rolling(cache, model, audio, [0])

    def recomputed(chunk: np.ndarray, position: int | None) -> bool:
        before = cache.computed_frames
        inputs = cache.update(chunk, position)
        np.testing.assert_allclose(model.from_responses(*(x[None] for x in inputs), raw=True),
                                   model.raw(chunk[None]), atol=1e-5, rtol=0)
        return cache.computed_frames - before == (chunk.size - 251) // 10 + 1

    size = 160000
    assert not recomputed(audio[8000:8000 + size], 8000)
    edited = audio[16000:16000 + size].copy()
    edited[1000] += 0.5  # same position, different audio: must not reuse
    assert recomputed(edited, 16000)
    assert recomputed(audio[24000:24000 + size], 20000)  # wrong position hint
    assert recomputed(audio[24005:24005 + size], 24005)  # not a multiple of the stride
    assert recomputed(audio[60000:60000 + size], 60000)  # moved too far to be worth it
    assert recomputed(audio[64000:64000 + size], None)  # no position
    assert recomputed(audio[64000:64000 + size - 800], 64000)  # another length
    with pytest.raises(ValueError, match="1-D"):
        cache.update(audio[None, :size], 0)
    with pytest.raises(ValueError, match="at least"):
        cache.update(audio[:model.min_samples - 1], 0)
    with pytest.raises(ValueError, match="NaN"):
        cache.update(np.full(size, np.nan, np.float32), 0)
    shortest = audio[:model.min_samples]  # the shortest chunk the network takes
    np.testing.assert_allclose(
        model.from_responses(*(x[None] for x in cache.update(shortest, 0)), raw=True),
        model.raw(shortest[None]), atol=1e-5, rtol=0)
    windows = np.zeros((1, 5325, 80), np.float32)
    with pytest.raises(ValueError, match="maxima and minima must be"):
        model.from_responses(windows, windows, np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="maxima and minima must be"):
        model.from_responses(windows, windows[:, :10], np.zeros((1, 2), np.float32))
    empty = model.from_responses(windows[:0], windows[:0], np.zeros((0, 2), np.float32))
    assert empty.shape[0] == 0 and empty.shape[2] == model.num_speakers


def test_resnet_runs_only_where_the_weights_matter(models: dict) -> None:
    """Speakers active in part of a chunk: the ResNet runs over that part (plus its
    receptive field) and the embeddings equal those of the whole chunk."""
    model = models["wespeaker"]
    assert model.crop_threshold is not None and models["xvector"].crop_threshold is None
    chunks = _speech_like(2, 10.0, seed=8)
    frames = model.num_frames(chunks.shape[1])
    weights = np.full((3, 589), 1e-8, np.float32)  # the front end's floor where silent
    weights[0, 400:] = np.linspace(0.2, 1.0, 189)  # chunk 0: speaker A at the end
    weights[1, 30:90] = 0.9  # chunk 0: speaker B early on (the union is cropped)
    weights[2, 250:300] = 1.0  # chunk 1: a short turn in the middle
    batch = chunks[[0, 0, 1]]
    spans: list[tuple[int, int]] = []
    trunk_span = model._module.trunk_span
    model._module.trunk_span = lambda w, a, b, **kw: (spans.append((a, b)),
                                                      trunk_span(w, a, b, **kw))[1]
    try:
        cropped = model(batch, weights)
    finally:
        model._module.trunk_span = trunk_span
    assert len(spans) == 2 and all(stop - start < frames for start, stop in spans)
    threshold, model.crop_threshold = model.crop_threshold, None
    try:
        full = model(batch, weights)
    finally:
        model.crop_threshold = threshold
    np.testing.assert_allclose(cropped, full, atol=1e-5 * np.abs(full).max(), rtol=0)
    # weights that matter everywhere: the whole chunk, one batched pass
    spans.clear()
    np.testing.assert_allclose(model(batch, np.ones((3, 589), np.float32)),
                               models["wespeaker"](batch), atol=1e-6)
    assert not spans


def test_resnet_trunk_span_equals_the_whole_trunk(models: dict) -> None:
    module = models["wespeaker"]._module
    audio = torch.from_numpy(_speech_like(1, 10.0, seed=9))
    with torch.inference_mode():
        whole = module.trunk(audio)
        for start, stop in [(0, whole.shape[-1]), (0, 7), (40, 60), (60, 61),
                            (whole.shape[-1] - 9, whole.shape[-1])]:
            torch.testing.assert_close(module.trunk_span(audio, start, stop),
                                       whole[..., start:stop], atol=1e-6, rtol=0)


def test_bf16_embeddings_stay_close_to_fp32(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "pytorch_model.bin", "wespeaker", seed=3)
    exact, fast = load_embedding(path), load_embedding(path, precision="bf16")
    assert exact.describe()["precision"] == "fp32" and fast.describe()["precision"] == "bf16"
    chunks = _speech_like(2, 10.0, seed=6)
    weights = np.random.default_rng(4).uniform(0, 1, (2, 300)).astype(np.float32)
    a, b = exact(chunks, weights), fast(chunks, weights)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert 0 < np.abs(a - b).max() < 0.02 * np.abs(a).max()  # bf16 did run, and stays close
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999


def test_compiled_trunk_gives_the_eager_embeddings_and_warms_up_once(tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    path = write_checkpoint(tmp_path / "pytorch_model.bin", "wespeaker", seed=3)
    eager, compiled = load_embedding(path), load_embedding(path, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    compiled.warm_up(5 * RATE)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    graphs = counters["stats"]["unique_graphs"]
    for batch in (3, 1, 5):  # any batch size of that length: no new graph
        chunks = _speech_like(batch, 5.0, seed=batch)
        a, b = eager(chunks), compiled(chunks)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
    assert counters["stats"]["unique_graphs"] == graphs


def test_fp32_gpu_passes_are_padded_to_fixed_shapes_without_changing_results(
        tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "pytorch_model.bin", "wespeaker", seed=3)
    plain, padded = load_embedding(path), load_embedding(path)
    assert not plain.fixed_shapes  # on the CPU every shape is fine
    # The padding rule is the GPU's; the same model on the CPU shows what it feeds the trunk.
    padded.device = torch.device("cuda")
    assert padded.fixed_shapes
    run, seen = padded._run, []
    padded._run = lambda rows: (seen.append(rows.shape[0]), run(rows))[1]
    padded.max_batch = 8
    chunks = _speech_like(11, 2.0, seed=9)
    for rows in (3, 1, 11):  # 11 rows: passes of 8 and 3
        np.testing.assert_allclose(padded(chunks[:rows]), plain(chunks[:rows]),
                                   rtol=1e-5, atol=1e-6)
    assert seen == [4, 1, 8, 4]
    del seen[:]
    padded.warm_up(2 * RATE)  # every shape a pass can take, once
    assert seen == [1, 2, 4, 8]
    padded.fixed_gpu_shapes = False
    padded(chunks[:3])
    assert seen[-1] == 3


def test_compile_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    from streamer.presets import load_frontend

    path = write_checkpoint(tmp_path / "pytorch_model.bin", "wespeaker")
    with pytest.raises(ValueError, match="torch backend only"):
        load_embedding(path, compile=True, backend="onnx")
    with pytest.raises(ValueError, match="not to packaged:campplus"):
        load_embedding("packaged:campplus", compile=True)
    with pytest.raises(ValueError, match="not to the embedded preset"):
        load_frontend("embedded", compile=True)


def test_bad_precision_is_refused(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "pytorch_model.bin", "wespeaker")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        load_embedding(path, precision="fp16")
    with pytest.raises(ValueError, match="torch backend only"):
        load_embedding(path, precision="bf16", backend="onnx")
    xvector = write_checkpoint(tmp_path / "xvector.bin", "xvector")
    with pytest.raises(ValueError, match="offered for the WeSpeaker ResNet"):
        load_embedding(xvector, precision="bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["segmentation-3.0", "wespeaker", "xvector"])
def test_cuda_matches_cpu(tmp_path: Path, kind: str) -> None:
    path = write_checkpoint(tmp_path / "pytorch_model.bin", kind)
    loader = load_segmentation if kind.startswith("segmentation") else load_embedding
    cpu, gpu = loader(path), loader(path, device="cuda")
    assert gpu.device.type == "cuda"
    if kind.startswith("segmentation"):  # filter reuse is a CPU path
        assert cpu.reuses_filter_responses and not gpu.reuses_filter_responses
    chunks = _speech_like(2, 10.0, seed=4)
    if kind.startswith("segmentation"):
        np.testing.assert_allclose(gpu.raw(chunks), cpu.raw(chunks), atol=1e-5)
    weights = np.random.default_rng(2).uniform(0, 1, (2, 589)).astype(np.float32)
    args = (chunks,) if kind.startswith("segmentation") else (chunks, weights)
    np.testing.assert_allclose(gpu(*args), cpu(*args), atol=1e-5)


def test_distinct_rows_finds_repeats_near_and_far() -> None:
    from streamer.models.pyannote.waveforms import distinct_rows

    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((3, 1000)).astype(np.float32)
    near_a = a.copy()
    near_a[1] += 1.0  # differs only where the sparse sample does not look
    batch = np.stack([a, a, b, a, near_a, c, c, np.zeros_like(a), np.zeros_like(a), b])
    unique, inverse = distinct_rows(batch)
    assert inverse == [0, 0, 1, 0, 2, 3, 3, 4, 4, 1]
    np.testing.assert_array_equal(unique[inverse], batch)
    alone = np.stack([a, b])
    assert distinct_rows(alone)[0] is alone
