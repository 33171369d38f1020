"""Speaker embeddings of a file, an excerpt or a sliding window, compared by cosine distance
and saved as JSON or .npy: the library (``streamer.tasks.embedding``) and ``streamer embed``
/ ``streamer compare``. The embedded preset runs on real speech (two voices, hand-made
reference turns); the pyannote preset on small random checkpoints made here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.audio import load_audio
from streamer.cli import main
from streamer.errors import AudioFormatError, ConfigError
from streamer.models.embedded import EmbeddedFrontend
from tests.checkpoints import write_checkpoint
from streamer.presets import load_frontend
from streamer.rttm import read_rttm
from streamer.tasks import cli_embedding
from streamer.tasks import embedding as tasks
from streamer.tasks.embedding import (EmbeddingFrontend, NotEmbeddable, cosine_distance, embed,
                                      embed_sliding, embedding_document, model_identity,
                                      read_document, sliding_document, window_spans)

DATA = Path(__file__).parent / "data"
RATE = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(DATA / "two_voices.wav")


@pytest.fixture(scope="module")
def turns() -> dict[str, list[tuple[float, float]]]:
    """Reference turns of each voice, in order."""
    by_speaker: dict[str, list[tuple[float, float]]] = {}
    for start, end, speaker in read_rttm(DATA / "two_voices.rttm")["two_voices"]:
        by_speaker.setdefault(speaker, []).append((start, end))
    return by_speaker


@pytest.fixture(scope="module")
def embedded() -> EmbeddedFrontend:
    return EmbeddedFrontend()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embedding-models")
    return {kind: write_checkpoint(root / f"{kind}.bin", kind)
            for kind in ("segmentation-3.0", "wespeaker", "xvector")}


@pytest.fixture(scope="module")
def pyannote(checkpoints: dict[str, Path]):
    return load_frontend("pyannote", str(checkpoints["segmentation-3.0"]),
                         str(checkpoints["wespeaker"]))


@pytest.fixture(params=["embedded", "pyannote"])
def frontend(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def unit(vector: np.ndarray) -> bool:
    return vector.dtype == np.float32 and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


# ---------------------------------------------------------------------------- library
def test_two_excerpts_of_one_voice_are_closer_than_excerpts_of_two_voices(embedded, speech,
                                                                         turns):
    alice = [embed(embedded, speech, start=s, end=e) for s, e in turns["alice"][:3]]
    bob = [embed(embedded, speech, start=s, end=e) for s, e in turns["bob"][:3]]
    same = [cosine_distance(a, b) for group in (alice, bob)
            for i, a in enumerate(group) for b in group[i + 1:]]
    different = cosine_distance(np.stack(alice), np.stack(bob))
    assert all(unit(v) for v in alice + bob)
    assert different.shape == (3, 3)
    assert max(same) < different.min(), (same, different)


def test_an_excerpt_equals_the_embedding_of_the_sliced_samples(frontend, speech):
    start, end = 11.3, 14.9
    excerpt = embed(frontend, speech, start=start, end=end)
    sliced = embed(frontend, speech[round(start * RATE):round(end * RATE)])
    assert excerpt.shape == (model_identity(frontend)["dimension"],) and unit(excerpt)
    np.testing.assert_array_equal(excerpt, sliced)
    head = speech[:12 * RATE]
    whole = embed(frontend, head)
    np.testing.assert_array_equal(whole, embed(frontend, head, start=0, end=12.0))
    assert cosine_distance(whole, excerpt) > 0  # not the same audio


def test_pyannote_embeddings_have_the_model_dimension(pyannote, checkpoints, speech):
    identity = model_identity(pyannote)
    assert identity == {"preset": "pyannote", "dimension": pyannote.embedding.dimension,
                        "embedding": str(Path(checkpoints["wespeaker"]).resolve())}
    alone = EmbeddingFrontend(pyannote.embedding, str(checkpoints["wespeaker"]))
    assert model_identity(alone) == identity  # the model alone, as the CLI loads it
    vector = embed(pyannote, speech, start=1.0, end=3.0)
    assert vector.shape == (identity["dimension"],) and unit(vector)
    np.testing.assert_array_equal(vector, embed(alone, speech, start=1.0, end=3.0))
    document = embedding_document(identity, "talk.wav", 1.0, 3.0, vector)
    assert document["model"]["dimension"] == len(document["embedding"]) == vector.shape[0]
    xvector = load_frontend("pyannote", str(checkpoints["segmentation-3.0"]),
                            str(checkpoints["xvector"]))
    assert embed(xvector, speech, end=2.0).shape == (xvector.embedding.dimension,)


class _RecordingModel:
    """An embedding model that remembers the lengths it saw and returns them."""

    dimension, min_samples = 2, 10

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def __call__(self, waveforms: np.ndarray, weights: None = None) -> np.ndarray:
        self.lengths.append(waveforms.shape[1])
        return np.array([[waveforms.shape[1], float(waveforms[0, 0])]], np.float32)


class _FakeFrontend:
    def __init__(self) -> None:
        self.embedding = _RecordingModel()

    def describe(self) -> dict:
        return {"preset": "fake", "embedding": "fake", "embedding_dimension": 2}


def test_a_long_excerpt_is_embedded_in_parts_weighted_by_length(monkeypatch):
    monkeypatch.setattr(tasks, "MAX_PASS_SECONDS", 1.0)
    frontend = _FakeFrontend()
    samples = np.repeat(np.array([0.0, 0.5, 1.0], np.float32), [8000, 8000, 9000])
    vector = embed(frontend, samples)
    assert frontend.embedding.lengths == [12500, 12500]  # two equal parts of at most 1 s
    raw = np.array([12500 * 12500 + 12500 * 12500, 12500 * 0.0 + 12500 * 0.5])
    np.testing.assert_allclose(vector, raw / np.linalg.norm(raw), rtol=1e-6)
    frontend.embedding.lengths.clear()
    embed(frontend, samples[:16000])
    assert frontend.embedding.lengths == [16000]  # up to the limit: one pass


def test_the_embedded_preset_reads_long_audio_in_blocks_that_change_nothing(
        monkeypatch, embedded, speech, turns):
    start, end = turns["bob"][0]
    expected = embed(embedded, speech, start=start, end=end)
    monkeypatch.setattr(tasks, "BLOCK_SECONDS", 0.7)  # the VAD and mel blocks
    np.testing.assert_allclose(embed(embedded, speech, start=start, end=end), expected,
                               atol=1e-6)


def test_sliding_windows_start_every_step_and_the_last_stops_at_the_end(embedded, speech):
    segments, rows = embed_sliding(embedded, speech, window=3.0, step=1.0, start=11.0,
                                   end=23.5)
    # full windows start at 11, 12, ..., 20; the 12.5 s excerpt's tail gets one more
    expected = [[11.0 + k, 14.0 + k] for k in range(10)] + [[21.0, 23.5]]
    np.testing.assert_allclose(segments, expected, atol=1e-9)
    assert rows.shape == (11, 256) and all(unit(row) for row in rows)
    for k in (0, 10):
        np.testing.assert_array_equal(rows[k], embed(embedded, speech, start=segments[k, 0],
                                                     end=segments[k, 1]))


def test_window_spans_follow_pyannote_sliding_windows():
    np.testing.assert_array_equal(window_spans(10, 4, 2), [[0, 4], [2, 6], [4, 8], [6, 10]])
    np.testing.assert_array_equal(window_spans(11, 4, 2),
                                  [[0, 4], [2, 6], [4, 8], [6, 10], [8, 11]])
    np.testing.assert_array_equal(window_spans(3, 4, 2), [[0, 3]])  # shorter than a window


def test_windows_that_cannot_be_embedded_are_nan_rows_not_skipped(embedded, pyannote, speech,
                                                                   turns):
    start, end = turns["alice"][0]
    signal = np.concatenate([np.zeros(3 * RATE, np.float32),
                             speech[round(start * RATE):round(end * RATE)]])
    segments, rows = embed_sliding(embedded, signal, window=2.0, step=1.0)
    assert len(segments) == len(rows) == (len(signal) - 2 * RATE) // RATE + 2
    silent = ~np.isfinite(rows).all(axis=1)
    assert silent[:2].all() and not silent[3:].any()  # the first windows are silence
    segments, rows = embed_sliding(pyannote, speech[:round(2.05 * RATE)], window=1.0, step=1.0)
    np.testing.assert_allclose(segments, [[0, 1], [1, 2], [2, 2.05]])
    assert np.isfinite(rows[:2]).all() and np.isnan(rows[2]).all()  # 50 ms: too short


def test_cosine_distance_of_vectors_and_matrices():
    a, b = np.array([1.0, 0.0]), np.array([3.0, 3.0])
    assert cosine_distance(a, b) == pytest.approx(1 - 1 / np.sqrt(2))
    assert cosine_distance(a, -a) == pytest.approx(2.0)
    assert isinstance(cosine_distance(a, a), float)
    x = np.random.default_rng(0).normal(size=(4, 5))
    y = np.random.default_rng(1).normal(size=(3, 5))
    expected = 1 - (x @ y.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1))
    np.testing.assert_allclose(cosine_distance(x, y), expected, atol=1e-12)
    assert cosine_distance(x[0], y).shape == (1, 3)
    with pytest.raises(ValueError, match="different dimensions: 5 and 4"):
        cosine_distance(x, y[:, :4])
    with pytest.raises(ValueError, match="NaN.*1 of 4 rows"):
        cosine_distance(np.vstack([x[:3], np.full(5, np.nan)]), y)
    with pytest.raises(ValueError, match="all zeros"):
        cosine_distance(np.zeros(5), y[0])
    with pytest.raises(ValueError, match="vector .* or a matrix"):
        cosine_distance(np.zeros((2, 2, 2)), y)


@pytest.mark.parametrize("start, end, says", [
    (3.0, 3.0, r"start \(3 s\) must come before end \(3 s\)"),
    (4.0, 2.0, "must come before end"),
    (40.0, None, "start 40 s is beyond the end of the audio"),
    (None, 40.0, "end 40 s is beyond the end of the audio"),
    (-1.0, None, "start must not be negative"),
    (None, float("nan"), "end must be a number of seconds"),
])
def test_bad_excerpts_are_refused(embedded, speech, start, end, says):
    with pytest.raises(ConfigError, match=says):
        embed(embedded, speech, start=start, end=end)


def test_audio_the_models_cannot_embed_is_refused(embedded, pyannote, speech):
    with pytest.raises(NotEmbeddable, match=r"shorter than the embedding model needs"):
        embed(pyannote, speech, start=1.0, end=1.01)
    with pytest.raises(NotEmbeddable, match="no speech found in the excerpt"):
        embed(embedded, np.zeros(2 * RATE, np.float32))
    with pytest.raises(NotEmbeddable, match="shorter than the voice activity detector"):
        embed(embedded, speech[:100])
    with pytest.raises(AudioFormatError, match="NaN"):
        embed(embedded, np.full(RATE, np.nan, np.float32))
    with pytest.raises(ValueError, match="mono float audio"):
        embed(embedded, np.zeros((2, RATE), np.float32))
    with pytest.raises(ConfigError, match=r"step \(2 s\) must not exceed window"):
        embed_sliding(embedded, speech, window=1.0, step=2.0)
    with pytest.raises(ConfigError, match="window must be at least 0.8 s"):
        embed_sliding(embedded, speech, window=0.5, step=0.5)
    with pytest.raises(ConfigError, match="shorter than the embedding model needs"):
        embed_sliding(pyannote, speech, window=0.01, step=0.01)


# ---------------------------------------------------------------------------- documents
def test_documents_read_back_exactly(tmp_path, embedded):
    identity = model_identity(embedded)
    vector = np.random.default_rng(0).normal(size=256).astype(np.float32)
    path = tmp_path / "one.json"
    path.write_text(json.dumps(embedding_document(identity, "/x/talk.wav", 1.5, 3.25, vector)))
    saved = read_document(path)
    np.testing.assert_array_equal(saved.embedding, vector)
    assert (saved.model, saved.audio, saved.start, saved.end) == (identity, "talk.wav", 1.5,
                                                                  3.25)
    rows = np.stack([vector, np.full(256, np.nan, np.float32)])
    document = sliding_document(identity, None, 0.0, 4.0, 3.0, 1.0,
                                np.array([[0.0, 3.0], [1.0, 4.0]]), rows)
    assert document["embeddings"][1] is None  # JSON has no NaN
    path.write_text(json.dumps(document))
    saved = read_document(path)
    assert saved.embedding is None
    np.testing.assert_array_equal(saved.embeddings, rows)
    np.testing.assert_array_equal(saved.segments, [[0.0, 3.0], [1.0, 4.0]])


@pytest.mark.parametrize("change, says", [
    ({"format": "other"}, "not a streamer embedding document"),
    ({"version": 2}, "version 2 is not supported"),
    ({"embedding": [0.5] * 3}, r"expected 1 embedding\(s\) of 4 values"),
    ({"model": {"preset": "x"}}, "must give preset, embedding and a positive dimension"),
])
def test_bad_documents_are_refused(tmp_path, change, says):
    document = embedding_document({"preset": "p", "embedding": "e", "dimension": 4}, None,
                                  0.0, 1.0, np.ones(4) / 2)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**document, **change}))
    with pytest.raises(ValueError, match=says):
        read_document(path)


# ---------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def voices(tmp_path_factory, speech, turns) -> dict[str, Path]:
    """Two turns of each voice as their own wav files: alice1, alice2, bob1, bob2."""
    root = tmp_path_factory.mktemp("voices")
    files = {}
    for speaker in ("alice", "bob"):
        for index, (start, end) in enumerate(turns[speaker][:2], 1):
            files[f"{speaker}{index}"] = root / f"{speaker}{index}.wav"
            sf.write(files[f"{speaker}{index}"], speech[round(start * RATE):round(end * RATE)],
                     RATE)
    return files


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(x) for x in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_two_audio_files(capsys, voices):
    code, same, _ = run(capsys, "compare", voices["alice1"], voices["alice2"])
    assert code == 0
    code, other, _ = run(capsys, "compare", voices["alice1"], voices["bob1"], "--json")
    line = json.loads(other)
    assert code == 0 and line["model"]["preset"] == "embedded"
    assert float(same) < line["distance"]


def test_compare_saved_embeddings_and_mixed_inputs(capsys, tmp_path, voices):
    saved = {}
    for name in ("alice1", "bob1"):
        saved[name] = tmp_path / f"{name}.json"
        code, _, err = run(capsys, "embed", voices[name], "--out", saved[name])
        assert code == 0 and "256-d embedding" in err
    code, from_files, _ = run(capsys, "compare", saved["alice1"], saved["bob1"])
    assert code == 0
    code, from_audio, _ = run(capsys, "compare", voices["alice1"], voices["bob1"])
    assert float(from_files) == pytest.approx(float(from_audio), abs=2e-6)
    code, mixed, _ = run(capsys, "compare", saved["alice1"], voices["bob1"])
    assert code == 0 and float(mixed) == pytest.approx(float(from_audio), abs=2e-6)
    code, vector, _ = run(capsys, "embed", voices["alice1"])  # no --out: printed
    np.testing.assert_array_equal(np.float32(json.loads(vector)),
                                  read_document(saved["alice1"]).embedding)


def test_compare_refuses_embeddings_of_different_models(capsys, tmp_path, voices, checkpoints):
    pyannote_json, embedded_json = tmp_path / "p.json", tmp_path / "e.json"
    models = ["--embedding", checkpoints["wespeaker"]]  # no segmentation model needed
    assert run(capsys, "embed", voices["alice1"], "--out", pyannote_json, *models)[0] == 0
    assert json.loads(pyannote_json.read_text())["model"]["dimension"] == 32
    assert run(capsys, "embed", voices["alice1"], "--out", embedded_json)[0] == 0
    code, out, err = run(capsys, "compare", pyannote_json, embedded_json)
    assert code == 2 and not out
    assert err.startswith("streamer: error: cannot compare embeddings of different models")
    assert "pyannote preset" in err and "32-d" in err and "256-d" in err
    xvector = ["--embedding", checkpoints["xvector"]]
    code, _, err = run(capsys, "compare", pyannote_json, voices["bob1"], *xvector)
    assert code == 2 and "different models" in err
    code, out, _ = run(capsys, "compare", pyannote_json, voices["bob1"], *models)
    assert code == 0 and 0.0 <= float(out) <= 2.0


def test_embed_writes_npy_and_sliding_documents(capsys, tmp_path, voices):
    npy, document = tmp_path / "one.npy", tmp_path / "windows.json"
    assert run(capsys, "embed", voices["alice1"], "--out", npy)[0] == 0
    # The CLI's default backend is the library's (ONNX Runtime for GE2E where installed).
    np.testing.assert_array_equal(np.load(npy), embed(load_frontend("embedded"),
                                                      load_audio(voices["alice1"])))
    code, _, err = run(capsys, "embed", voices["bob1"], "--window", 2, "--step", 1,
                       "--out", document)
    data = json.loads(document.read_text())
    count = len(data["segments"])
    assert code == 0 and f"{count} windows of 2 s every 1 s" in err
    assert data["segments"][:2] == [[0.0, 2.0], [1.0, 3.0]] and data["window"] == 2.0
    assert len(data["embeddings"]) == count and len(data["embeddings"][0]) == 256
    code, out, _ = run(capsys, "embed", voices["bob1"], "--window", 2, "--step", 1)
    assert code == 0 and len(out.splitlines()) == count  # one line per window
    assert out.splitlines()[1].split()[:2] == ["1.000", "3.000"]
    code, _, err = run(capsys, "compare", document, npy)
    assert code == 2 and "sliding-window embeddings" in err


@pytest.mark.parametrize("argv, says", [
    (["embed", "{audio}", "--out", "{tmp}/missing/x.json"], "no such folder"),
    (["embed", "{audio}", "--out", "{tmp}/x.txt"], "must end in .json or .npy"),
    (["embed", "{tmp}/none.wav"], "none.wav: no such file"),
    (["embed", "{audio}", "--start", "99"], "start 99 s is beyond the end of the audio"),
    (["embed", "{audio}", "--step", "1"], "--step goes with --window"),
    (["compare", "{audio}", "{tmp}/none.wav"], "none.wav: no such file"),
    (["compare", "{audio}", "{tmp}/x.npy"], "does not say which model made it"),
], ids=["out-folder", "out-suffix", "audio", "start", "step", "compare-audio", "npy"])
def test_bad_inputs_fail_before_any_model_loads(capsys, monkeypatch, tmp_path, voices, argv,
                                                says):
    def no_models(args):
        raise AssertionError("models loaded before the inputs were checked")

    monkeypatch.setattr(cli_embedding, "_load_model", no_models)
    (tmp_path / "x.npy").write_bytes(b"")
    values = {"audio": voices["alice1"], "tmp": tmp_path}
    code, out, err = run(capsys, *(part.format(**values) for part in argv))
    assert code == 2 and not out
    assert err.startswith("streamer: error: ") and says in err
    assert not (tmp_path / "missing").exists() and not (tmp_path / "x.txt").exists()
