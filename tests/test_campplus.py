"""The CAM++ encoder and the ``accurate`` preset (packaged segmentation-3.0 + CAM++)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamer.audio import load_audio
from streamer.config import StreamConfig
from streamer.engine import diarize_array
from streamer.errors import ModelLoadError
from streamer.evaluation import der_components, rotate_samples, rotate_segments
from streamer.models.base import embedding_identity
from streamer.models.campplus import CampPlusEmbedding, load_campplus
from streamer.models.packaged import PACKAGED, packaged_path
from streamer import presets
from streamer.models.pyannote import onnx as onnx_export
from streamer.presets import load_frontend
from streamer.rttm import read_rttm
from tests.paths import DATA, EVAL, SAMPLE

needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} is absent")


@pytest.fixture(scope="module")
def campplus() -> CampPlusEmbedding:
    return CampPlusEmbedding()


@pytest.fixture(scope="module")
def accurate():
    return load_frontend("accurate")


def test_network_matches_the_reference_implementation():
    """``campplus_reference.npz``: embeddings of two fixed inputs computed by an
    independent implementation of 3D-Speaker's CAM++ with the packaged weights."""
    reference = np.load(DATA / "campplus_reference.npz")
    with torch.inference_mode():
        ours = load_campplus()(torch.from_numpy(reference["fbank"])).numpy()
    np.testing.assert_allclose(ours, reference["embeddings"], atol=1e-4)


def test_packaged_weights_load_without_pickle(tmp_path):
    with np.load(packaged_path("packaged:campplus"), allow_pickle=False) as archive:
        assert "xvector.dense.linear.weight" in archive.files
    # a torch state dict of the same network loads too
    state = load_campplus().state_dict()
    torch.save(state, tmp_path / "campplus.pt")
    x = torch.randn(1, 120, 80)
    with torch.inference_mode():
        np.testing.assert_allclose(load_campplus(str(tmp_path / "campplus.pt"))(x).numpy(),
                                   load_campplus()(x).numpy(), atol=1e-5)


def test_bad_weight_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive")
    with pytest.raises(ModelLoadError, match="cannot read CAM"):
        load_campplus(str(garbage))
    other = tmp_path / "other.npz"
    np.savez(other, weight=np.zeros(3, np.float32))
    with pytest.raises(ModelLoadError, match="not a CAM"):
        load_campplus(str(other))
    with pytest.raises(ModelLoadError, match="packaged:campplus"):
        packaged_path("packaged:nothing")
    assert set(PACKAGED) == {"segmentation-3.0", "campplus"}


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    return (_unit(a) * _unit(b)).sum(1)


def test_weights_select_frames_and_rows_are_independent(campplus):
    rng = np.random.default_rng(0)
    chunks = (0.1 * rng.standard_normal((2, 48000))).astype(np.float32)
    batch = chunks[[0, 0, 1]]
    weights = rng.random((3, 200)).astype(np.float32)
    together = campplus(batch, weights)
    alone = np.concatenate([campplus(batch[i:i + 1], weights[i:i + 1]) for i in range(3)])
    # (a batch may take other convolution kernels: equal to float rounding)
    assert _cosines(together, alone).min() > 0.99999
    # uniform weights are plain statistics pooling
    assert _cosines(campplus(chunks[:1], np.ones((1, 200), np.float32)),
                    campplus(chunks[:1]))[0] > 0.99999
    with pytest.raises(ValueError, match="weights must be"):
        campplus(chunks, np.ones((3, 10), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        campplus(chunks, np.full((2, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match="too short for this model"):
        campplus(chunks[:, :100])


def test_weights_pick_the_voice_of_their_frames(campplus):
    """10 s of the fixture: alice until 4.7 s, bob from 5.1 s. Weighting either part gives
    an embedding of that voice (as embedding the part alone would)."""
    audio = load_audio(DATA / "two_voices.wav")[:160000]
    frames = np.arange(500) * 0.02
    alice = (frames < 4.7).astype(np.float32)
    bob = (frames > 5.1).astype(np.float32)
    weighted = campplus(np.stack([audio, audio]), np.stack([alice, bob]))
    alone = campplus(np.stack([audio[8000:75000], audio[82000:149000]]))
    similarity = _unit(weighted) @ _unit(alone).T
    assert similarity[0, 0] > similarity[0, 1] + 0.2, similarity
    assert similarity[1, 1] > similarity[1, 0] + 0.2, similarity


def test_turns_of_one_voice_are_closer_than_turns_of_two(campplus):
    audio = load_audio(DATA / "two_voices.wav")
    turns = read_rttm(DATA / "two_voices.rttm")["two_voices"]
    rows = [audio[int(s * 16000):int(e * 16000)][:48000] for s, e, _ in turns[:4]]
    size = min(len(r) for r in rows)
    embeddings = campplus(np.stack([r[:size] for r in rows]))
    similarity = _unit(embeddings) @ _unit(embeddings).T
    names = [name for _, _, name in turns[:4]]
    assert names == ["alice", "bob", "alice", "bob"]
    same = min(similarity[0, 2], similarity[1, 3])
    different = max(similarity[0, 1], similarity[0, 3], similarity[1, 2], similarity[2, 3])
    assert same > different + 0.2, similarity


def test_accurate_preset_loads_packaged_models(accurate):
    info = accurate.describe()
    assert info["preset"] == "accurate"
    assert info["segmentation"] == "packaged:segmentation-3.0"
    assert info["embedding"] == "packaged:campplus"
    assert info["embedding_dimension"] == 192 and info["local_speakers"] == 3
    assert accurate.default_delta_new == CampPlusEmbedding.delta_new
    assert accurate.default_pitch_weight == CampPlusEmbedding.pitch_weight > 0
    assert embedding_identity(accurate) == {"preset": "accurate",
                                            "embedding": "packaged:campplus",
                                            "dimension": 192}
    # the pyannote preset takes packaged models as sources too
    mixed = load_frontend("pyannote", segmentation="packaged:segmentation-3.0",
                          embedding="packaged:campplus")
    assert mixed.describe()["preset"] == "pyannote"
    with pytest.raises(Exception, match="bf16"):
        load_frontend("accurate", precision="bf16")


@needs_sample
@pytest.mark.slow
@pytest.mark.parametrize("shift", [0.0, 0.9, 4.7])
def test_accurate_preset_finds_the_two_speakers_of_sample_from_any_start(accurate, shift):
    samples, applied = rotate_samples(load_audio(SAMPLE), shift)
    duration = len(samples) / 16000
    reference = rotate_segments(read_rttm(EVAL / "reference.rttm")["sample"], applied, duration)
    turns, engine = diarize_array(accurate, samples, StreamConfig(), chunk=5.0)
    assert len({t.speaker for t in turns}) == 2
    der = der_components(reference, [(t.start, t.end, t.speaker) for t in turns]).der
    assert der < 0.2, f"DER {der:.3f} from {shift} s"


def test_onnx_backend_runs_the_network_in_onnx_runtime_with_the_same_embeddings(
        campplus, tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(tmp_path))
    frontend = load_frontend("accurate", backend="onnx")
    assert frontend.embedding.describe()["backend"] == "onnx"
    assert list(tmp_path.glob("embedding-campplus-*.onnx"))
    rng = np.random.default_rng(3)
    chunks = (0.1 * rng.standard_normal((2, 160000))).astype(np.float32)
    weights = rng.random((2, 589)).astype(np.float32)
    assert _cosines(frontend.embedding(chunks, weights), campplus(chunks, weights)).min() > 0.99999


def test_auto_backend_runs_the_packaged_models_in_onnx_runtime(tmp_path, monkeypatch,
                                                                caplog):
    """The default backend gives the accurate preset ONNX Runtime for both packaged models
    on the CPU; the same models given as sources (the pyannote preset) stay in torch, and
    so does the accurate preset without ONNX Runtime or when the export fails."""
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(tmp_path))
    frontend = load_frontend("accurate")
    assert frontend.segmentation.describe()["backend"] == "onnx"
    assert frontend.embedding.describe()["backend"] == "onnx"
    assert load_frontend("accurate", backend="torch").embedding.describe()["backend"] == "torch"
    given = load_frontend("pyannote", segmentation="packaged:segmentation-3.0",
                          embedding="packaged:campplus")
    assert given.segmentation.describe()["backend"] == "torch"
    assert given.embedding.describe()["backend"] == "torch"
    monkeypatch.setattr(presets, "onnx_available", lambda: False)
    assert load_frontend("accurate").embedding.describe()["backend"] == "torch"
    monkeypatch.undo()
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(tmp_path / "fresh"))

    def failing(*args, **kwargs):
        raise ModelLoadError("ONNX export failed (RuntimeError: no)")

    monkeypatch.setattr(onnx_export, "onnx_runner", failing)
    with caplog.at_level("WARNING", logger="streamer.presets"):
        fallback = load_frontend("accurate")
    assert fallback.segmentation.describe()["backend"] == "torch"
    assert fallback.embedding.describe()["backend"] == "torch"
    assert "ONNX export failed" in caplog.text
