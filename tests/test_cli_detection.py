"""``streamer vad / osd / scores / resegment`` end to end, in process.

pyannote runs use small random-weight checkpoints made here (their scores mean nothing:
the tests check shapes, timing, files and messages); the embedded preset runs Silero on
real speech.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.cli import main
from streamer.rttm import read_rttm
from streamer.tasks.detection import PRESETS, SILERO_DEFAULT

DATA = Path(__file__).resolve().parent / "data"
SPEECH = DATA / "two_voices.wav"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tests.checkpoints import write_checkpoint

    root = tmp_path_factory.mktemp("detection-models")
    return {kind: str(write_checkpoint(root / kind / "pytorch_model.bin", kind))
            for kind in ("segmentation-3.0", "segmentation-2")}


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 12.2 s of the two-voice recording, named like it (same RTTM uri)."""
    samples, rate = sf.read(SPEECH, dtype="float32")
    path = tmp_path_factory.mktemp("excerpt") / "two_voices.wav"
    sf.write(path, samples[: int(12.2 * rate)], rate)
    return path


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _regions_agree(document: dict, rttm: Path, label: str) -> list[tuple[float, float]]:
    regions = [(r["start"], r["end"]) for r in document["regions"]]
    turns = read_rttm(rttm)["two_voices"]
    assert [k for _, _, k in turns] == [label] * len(regions)
    assert np.allclose([(s, e) for s, e, _ in turns], regions, atol=2e-3)
    assert all(0 <= s < e <= document["duration"] for s, e in regions)
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(regions, regions[1:]))
    return regions


def test_vad_writes_rttm_and_json(capsys, tmp_path, models, excerpt):
    rttm, document = tmp_path / "speech.rttm", tmp_path / "speech.json"
    code, out, err = run(capsys, "vad", excerpt, "--segmentation", models["segmentation-3.0"],
                         "--tuned-on", "ami", "--onset", "0.3", "--rttm", rttm,
                         "--json", document)
    assert code == 0, err
    data = json.loads(document.read_text())
    assert data["audio"] == "two_voices.wav" and data["task"] == "vad"
    assert data["duration"] == pytest.approx(12.2, abs=1e-3) and data["tuned_on"] == "ami"
    assert data["binarization"] == {**PRESETS["vad"]["ami"].to_dict(), "onset": 0.3}
    assert data["model"]["powerset"] is True
    _regions_agree(data, rttm, "SPEECH")
    assert out == "" and "vad regions" in err


def test_osd_labels_overlap_and_uses_the_default_values(capsys, tmp_path, models, excerpt):
    rttm, document = tmp_path / "overlap.rttm", tmp_path / "overlap.json"
    code, _, err = run(capsys, "osd", excerpt, "--segmentation", models["segmentation-2"],
                       "--offset", "0", "--onset", "0.3", "--rttm", rttm, "--json", document,
                       "--step", "1.0")
    assert code == 0, err
    data = json.loads(document.read_text())
    assert data["binarization"] == {**PRESETS["osd"]["dihard3"].to_dict(), "onset": 0.3,
                                    "offset": 0.0}
    regions = _regions_agree(data, rttm, "OVERLAP")
    assert regions  # offset 0: nothing ends a region once one starts
    assert regions[-1][1] == pytest.approx(data["duration"], abs=0.05)


def test_vad_prints_regions_when_no_file_is_asked_for(capsys, models, excerpt):
    code, out, _ = run(capsys, "vad", excerpt, "--segmentation", models["segmentation-2"],
                       "--onset", "0", "--offset", "0")
    assert code == 0
    rows = [[float(x) for x in line.split()] for line in out.splitlines()]
    assert len(rows) == 1 and rows[0][0] < 0.05 and rows[0][1] > 12.1


@pytest.mark.parametrize("kind,raw,classes", [("segmentation-3.0", False, 3),
                                              ("segmentation-3.0", True, 7),
                                              ("segmentation-2", False, 4)])
def test_scores_npy_matches_the_json_timing(capsys, tmp_path, models, excerpt, kind, raw,
                                            classes):
    prefix = tmp_path / "scores"
    code, _, err = run(capsys, "scores", excerpt, "--segmentation", models[kind], "--out",
                       prefix, *(["--raw"] if raw else []))
    assert code == 0, err
    scores = np.load(f"{prefix}.npy")
    data = json.loads(Path(f"{prefix}.json").read_text())
    frames = data["frames"]
    assert scores.dtype == np.float32 and list(scores.shape) == data["shape"]
    assert scores.shape[1] == classes == len(data["classes"])
    last_middle = frames["start"] + frames["duration"] / 2 + (len(scores) - 1) * frames["step"]
    assert last_middle < data["duration"] <= last_middle + frames["step"]
    assert data["chunk_duration"] == (10.0 if kind == "segmentation-3.0" else 5.0)
    assert data["step"] == pytest.approx(data["chunk_duration"] / 10)
    assert data["powerset"] is (kind == "segmentation-3.0") and data["raw"] is raw
    assert data["sample_rate"] == 16000 and data["file"] == "scores.npy"
    if raw:
        assert data["output"] == "log-probabilities" and scores.max() <= 0
        assert data["classes"][0] == "non-speech"
    else:
        assert data["output"] == "activations" and 0 <= scores.min() <= scores.max() <= 1


def test_scores_of_the_embedded_preset_are_silero_probabilities(capsys, tmp_path, excerpt):
    prefix = tmp_path / "silero"
    code, _, err = run(capsys, "scores", excerpt, "--out", prefix)
    assert code == 0, err
    scores = np.load(f"{prefix}.npy")
    data = json.loads(Path(f"{prefix}.json").read_text())
    assert data["classes"] == ["speech"] and data["frames"]["step"] == 0.032
    assert len(scores) == math.ceil(12.2 / 0.032) and data["chunk_duration"] is None
    assert scores[:10].max() < 0.5 < scores[40:60].mean()  # silence, then alice speaks


def test_embedded_vad_finds_the_speech_of_a_real_recording(capsys, tmp_path):
    document = tmp_path / "speech.json"
    code, _, err = run(capsys, "vad", SPEECH, "--json", document)
    assert code == 0, err
    data = json.loads(document.read_text())
    assert data["binarization"] == SILERO_DEFAULT.to_dict()
    found = [(r["start"], r["end"]) for r in data["regions"]]
    reference = [(s, e) for s, e, _ in read_rttm(DATA / "two_voices.rttm")["two_voices"]]
    shared = sum(max(0.0, min(e1, e2) - max(s1, s2))
                 for s1, e1 in found for s2, e2 in reference)
    assert shared > 0.85 * sum(e - s for s, e in reference)  # recall
    assert shared > 0.85 * sum(e - s for s, e in found)  # precision
    assert found[0][0] > 0.3  # the recording opens with silence


def test_resegment_keeps_the_baseline_speakers(capsys, tmp_path, models, excerpt):
    rttm, document = tmp_path / "reseg.rttm", tmp_path / "reseg.json"
    code, _, err = run(capsys, "resegment", excerpt, "--baseline",
                       DATA / "two_voices.rttm", "--segmentation",
                       models["segmentation-3.0"], "--onset", "0.2", "--offset", "0.2",
                       "--rttm", rttm, "--json", document)
    assert code == 0, err
    data = json.loads(document.read_text())
    assert data["task"] == "resegmentation" and data["uri"] == "two_voices"
    segments = [(s["start"], s["end"], s["speaker"]) for s in data["segments"]]
    assert segments and {k for _, _, k in segments} <= {"alice", "bob"}
    turns = read_rttm(rttm)["two_voices"]
    assert np.allclose([t[:2] for t in turns], [s[:2] for s in segments], atol=2e-3)


def test_resegment_takes_the_file_named_by_uri(capsys, tmp_path, models, excerpt):
    renamed = tmp_path / "meeting.wav"
    shutil.copy(excerpt, renamed)
    args = ("resegment", renamed, "--baseline", DATA / "two_voices.rttm",
            "--segmentation", models["segmentation-2"])
    code, _, err = run(capsys, *args)
    assert code == 2
    assert err.strip().endswith("has no segments for 'meeting' (it has two_voices): "
                                "choose one with --uri")
    # Low thresholds: the test's random weights give weak activations.
    code, out, err = run(capsys, *args, "--uri", "two_voices", "--onset", "0.2",
                         "--offset", "0.2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines, "resegmentation of the named file printed no turns"
    assert all(line.split()[2] in ("alice", "bob") for line in lines)


@pytest.mark.parametrize("baseline,says", [
    ("missing.rttm", "no such file"),
    ("empty.rttm", "holds no SPEAKER lines"),
    ("broken.rttm", "malformed RTTM line"),
])
def test_bad_baselines_are_reported(capsys, tmp_path, models, excerpt, baseline, says):
    (tmp_path / "empty.rttm").write_text(";; nothing here\n")
    (tmp_path / "broken.rttm").write_text("SPEAKER two_voices 1 0.5\n")
    code, _, err = run(capsys, "resegment", excerpt, "--baseline", tmp_path / baseline,
                       "--segmentation", models["segmentation-2"])
    assert code == 2 and err.startswith("streamer: error: ") and says in err


@pytest.mark.parametrize("args,says", [
    (("osd",), "embedded preset has no overlapped speech model"),
    (("resegment", "--baseline", "nowhere.rttm"), "embedded preset has no resegmentation"),
    (("vad", "--tuned-on", "ami"), "the embedded preset's Silero VAD has its own defaults"),
])
def test_the_embedded_preset_refuses_what_it_cannot_do(capsys, excerpt, args, says):
    code, _, err = run(capsys, args[0], excerpt, *args[1:])
    assert code == 2 and says in err and "pyannote" in err


@pytest.mark.parametrize("args,says", [
    (("--onset", "1.5"), "onset must be between 0 and 1"),
    (("--min-duration-on", "-1"), "min_duration_on must be 0 or more"),
    (("--step", "0"), "--step must be more than 0"),
    (("--step", "11"), "step must be more than 0 and at most the model's chunk (10 s)"),
    (("--rttm", "no/such/folder/out.rttm"), "cannot write --rttm"),
])
def test_bad_settings_fail_with_one_line(capsys, tmp_path, models, excerpt, args, says):
    code, out, err = run(capsys, "vad", excerpt, "--segmentation",
                         models["segmentation-3.0"], *args)
    assert code == 2 and out == "" and says in err and len(err.strip().splitlines()) == 1


def test_a_bad_audio_file_fails_before_the_models(capsys, tmp_path):
    code, _, err = run(capsys, "vad", tmp_path / "missing.wav", "--segmentation",
                       tmp_path / "no-model.bin", "--json", tmp_path / "out.json")
    assert code == 2 and "missing.wav" in err and "no-model" not in err
    assert not (tmp_path / "out.json").exists()


def test_a_failed_run_leaves_no_new_output(capsys, tmp_path, excerpt):
    outputs = [tmp_path / "out.npy", tmp_path / "out.json"]
    code, _, err = run(capsys, "scores", excerpt, "--out", tmp_path / "out",
                       "--segmentation", tmp_path / "no-model.bin")
    assert code == 2 and "no-model.bin" in err
    assert not any(path.exists() for path in outputs)
