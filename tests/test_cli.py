"""The ``streamer`` command end to end, as a user runs it (real subprocesses)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamer.evaluation import der_components
from streamer.results import clock
from streamer.rttm import read_rttm
from tests.paths import DATA, SAMPLE, SHARED

needs_shared = pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SHARED} is absent")


def streamer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.run([sys.executable, "-m", "streamer", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@needs_shared
def test_diarize_sample_writes_rttm_and_json(tmp_path):
    rttm, document = tmp_path / "out.rttm", tmp_path / "out.json"
    result = streamer("diarize", str(SAMPLE), "--rttm", str(rttm), "--json", str(document))
    assert result.returncode == 0, result.stderr
    turns = read_rttm(rttm)["sample"]
    reference = read_rttm(SHARED / "eval" / "reference.rttm")["sample"]
    der = der_components(reference, turns, [(0.0, 30.0)]).der
    assert der < 0.25, f"DER {der:.3f} on sample.wav"
    data = json.loads(document.read_text())
    assert data["num_speakers"] == len(data["speakers"]) >= 2
    assert len(data["segments"]) == len(turns)
    assert set(data["embeddings"]) == set(data["speakers"])
    assert all(len(v) == 256 for v in data["embeddings"].values())
    starts = [s["start"] for s in data["segments"]]
    assert starts == sorted(starts)
    assert "real-time factor" in result.stderr


def test_accurate_preset_from_the_command_line(tmp_path):
    """``--preset accurate`` (packaged models, no download): the fixture's two voices, and
    the preset listed by ``streamer models``."""
    rttm, document = tmp_path / "out.rttm", tmp_path / "out.json"
    result = streamer("diarize", str(DATA / "two_voices.wav"), "--preset", "accurate",
                      "--rttm", str(rttm), "--json", str(document), "--no-progress")
    assert result.returncode == 0, result.stderr
    reference = read_rttm(DATA / "two_voices.rttm")["two_voices"]
    der = der_components(reference, read_rttm(rttm)["two_voices"]).der
    assert der < 0.15, f"DER {der:.3f}"
    data = json.loads(document.read_text())
    assert data["num_speakers"] == 2
    assert all(len(v) == 192 for v in data["embeddings"].values())
    listing = streamer("models")
    assert "packaged:campplus" in listing.stdout and "accurate" in listing.stdout
    bad = streamer("diarize", str(DATA / "two_voices.wav"), "--preset", "accurate",
                   "--embedding", "packaged:nope")
    assert bad.returncode != 0 and "packaged:campplus" in bad.stderr


def seconds(clock_text: str) -> float:
    hours, minutes, rest = clock_text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


def test_meronym_json_has_the_hosted_shape_and_the_rttm_turns(tmp_path):
    rttm, document = tmp_path / "out.rttm", tmp_path / "out.json"
    result = streamer("diarize", str(DATA / "two_voices.wav"), "--rttm", str(rttm),
                      "--json", str(document), "--json-format", "meronym")
    assert result.returncode == 0, result.stderr
    turns = read_rttm(rttm)["two_voices"]
    data = json.loads(document.read_text())
    assert set(data) == {"segments", "speakers"}
    assert len(data["segments"]) == len(turns) > 0
    for segment, (start, end, speaker) in zip(data["segments"], turns):
        assert set(segment) == {"speaker", "start", "stop"}
        assert re.fullmatch(r"\d+:\d\d:\d\d\.\d{6}", segment["start"])
        assert re.fullmatch(r"\d+:\d\d:\d\d\.\d{6}", segment["stop"])
        assert seconds(segment["start"]) == pytest.approx(start, abs=1e-3)
        assert seconds(segment["stop"]) == pytest.approx(end, abs=1e-3)
        assert segment["speaker"] == speaker
    speakers = data["speakers"]
    assert speakers["count"] == len(speakers["labels"]) == len({t[2] for t in turns}) == 2
    assert set(speakers["embeddings"]) == set(speakers["labels"])
    assert all(len(v) == 256 for v in speakers["embeddings"].values())


def test_clock_writes_hours_minutes_seconds_and_microseconds():
    assert clock(0.0) == "0:00:00.000000"
    assert clock(3661.5) == "1:01:01.500000"
    assert clock(59.9999996) == "0:01:00.000000"
    assert clock(36000.000001) == "10:00:00.000001"


def test_unknown_json_format_is_refused():
    result = streamer("diarize", str(DATA / "two_voices.wav"), "--json-format", "xml")
    assert result.returncode == 2 and "invalid choice: 'xml'" in result.stderr


@needs_shared
def test_eval_prints_der_per_file_and_total(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "sample.wav").symlink_to(SAMPLE)
    lines = (SHARED / "eval" / "reference.rttm").read_text().splitlines()
    reference = tmp_path / "ref.rttm"
    reference.write_text("\n".join(line for line in lines if " sample " in line) + "\n")
    result = streamer("eval", "--audio", str(audio), "--rttm", str(reference),
                      "--uem", str(SHARED / "eval" / "reference.uem"))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    assert {"sample", "TOTAL"} <= set(rows)
    assert rows["file"] == ["file", "DER", "miss", "FA", "conf", "DER-ov", "JER", "spk", "ref",
                            "RTF"]
    assert rows["sample"][1:7] == rows["TOTAL"][1:7]
    assert 0.0 < float(rows["TOTAL"][1].rstrip("%")) < 50.0
    assert rows["sample"][-2] == "2"  # speakers of the reference
    assert rows["TOTAL"][-2] == f"{int(rows['sample'][-3] == '2')}/1"  # files counted right
    assert float(rows["TOTAL"][-1]) < 1.0  # real-time factor


@needs_shared
def test_eval_reference_count_gives_each_file_its_speaker_count(tmp_path):
    audio = tmp_path / "set"
    audio.mkdir()
    (audio / "trn00.wav").symlink_to(SHARED / "eval" / "trn00.wav")
    lines = (SHARED / "eval" / "reference.rttm").read_text().splitlines()
    (audio / "reference.rttm").write_text(
        "\n".join(line for line in lines if " trn00 " in line) + "\n")
    document = tmp_path / "scores.json"
    counts = {}
    for flags in ((), ("--reference-count", "--json", str(document))):
        result = streamer("eval", str(audio), *flags)
        assert result.returncode == 0, result.stderr
        row = next(line.split() for line in result.stdout.splitlines()
                   if line.startswith("trn00"))
        counts[bool(flags)] = (row[-3], row[-2])
    assert counts == {False: ("2", "3"), True: ("3", "3")}
    assert json.loads(document.read_text())["reference_count"] is True


def eval_set(folder: Path, seconds: float | None, uem: bool) -> Path:
    """A folder holding tests/data/two_voices.wav (``whole.wav``) or its first ``seconds``
    (``part.wav``), its hand-made reference clipped alike and, optionally, a UEM."""
    data, rate = sf.read(Path(__file__).parent / "data" / "two_voices.wav", dtype="float32")
    folder.mkdir()
    uri = "whole" if seconds is None else "part"
    seconds = len(data) / rate if seconds is None else seconds
    sf.write(folder / f"{uri}.wav", data[:round(seconds * rate)], rate)
    lines = []
    for start, end, speaker in read_rttm(Path(__file__).parent / "data" / "two_voices.rttm")[
            "two_voices"]:
        if start < seconds:
            lines.append(f"SPEAKER {uri} 1 {start:.3f} {min(end, seconds) - start:.3f} <NA> <NA> "
                         f"{speaker} <NA> <NA>")
    (folder / "reference.rttm").write_text("\n".join(lines) + "\n")
    if uem:
        (folder / "reference.uem").write_text(f"{uri} NA 0.000 {len(data) / rate:.3f}\n")
    return folder


def test_eval_scores_several_sets_from_several_start_points(tmp_path):
    one = eval_set(tmp_path / "one", None, uem=True)
    two = eval_set(tmp_path / "two", 12.0, uem=False)
    document = tmp_path / "scores.json"
    result = streamer("eval", str(one), str(two), "--shift", "0,5.5", "--json", str(document))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}
    files = ["one/whole@0", "one/whole@5.5", "two/part@0", "two/part@5.5"]
    assert [name for name in rows if "/" in name] == \
        files[:2] + ["one/whole@all", "one/TOTAL"] + files[2:] + ["two/part@all", "two/TOTAL"]
    assert all(rows[name][-2] == "2" for name in files)  # reference speakers
    right = sum(rows[name][-3] == "2" for name in files)
    assert rows["TOTAL"][-2] == f"{right}/4"
    assert rows["one/TOTAL"][-2] == f"{sum(rows[n][-3] == '2' for n in files[:2])}/2"
    # a shifted reference that did not follow the rotated audio would be ~50 % wrong
    for name in files[:2]:
        assert float(rows[name][1].rstrip("%")) < 25.0, rows[name]

    data = json.loads(document.read_text())
    assert [(f["set"], f["file"], f["shift"]) for f in data["files"]] == \
        [("one", "whole", 0.0), ("one", "whole", 5.5), ("two", "part", 0.0), ("two", "part", 5.5)]
    for name, figures in zip(files, data["files"]):
        printed = [float(x.rstrip("%")) for x in rows[name][1:7]]
        keys = ["der", "missed", "false_alarm", "confusion", "der_no_overlap", "jer"]
        assert printed == pytest.approx([100 * figures[k] for k in keys], abs=0.051)
        assert figures["reference_speakers"] == 2 and figures["jer_speakers"] == 2
    total = data["total"]
    assert (total["files"], total["right_count"]) == (4, right)
    assert total["jer"] == pytest.approx(
        sum(f["jer"] * f["jer_speakers"] for f in data["files"]) / 8)
    assert total["der"] == pytest.approx(
        sum(f["der"] * f["speech"] for f in data["files"]) / total["speech"])
    assert data["sets"]["two"]["files"] == 2 and data["shifts"] == [0.0, 5.5]
    assert data["passes"] == 2  # file mode's default

    # each file over its start points: the DER of both together, and the worse of the two
    for name, file_data in zip(["one/whole", "two/part"], data["start_points"]):
        runs = [f for f in data["files"] if f"{f['set']}/{f['file']}" == name]
        assert f"{file_data['set']}/{file_data['file']}" == name and file_data["files"] == 2
        assert file_data["der"] == pytest.approx(
            sum(f["der"] * f["speech"] for f in runs) / sum(f["speech"] for f in runs))
        worst = max(runs, key=lambda f: f["der"])
        assert file_data["worst"] == {"shift": worst["shift"], "gain": None,
                                      "der": worst["der"]}
        row = rows[f"{name}@all"]
        assert float(row[1].rstrip("%")) == pytest.approx(100 * file_data["der"], abs=0.051)
        assert row[-3:] == ["worst", f"{100 * worst['der']:.1f}%", f"@{worst['shift']:g}"]

    # the old one-set form gives the unshifted figures, with rows named as the files
    old = streamer("eval", "--audio", str(one), "--rttm", str(one / "reference.rttm"),
                   "--uem", str(one / "reference.uem"))
    assert old.returncode == 0, old.stderr
    old_rows = {line.split()[0]: line.split() for line in old.stdout.splitlines() if line}
    assert old_rows["whole"][1:-1] == rows["one/whole@0"][1:-1]


def test_eval_refuses_a_second_audio_set_rather_than_dropping_one(tmp_path):
    one = eval_set(tmp_path / "one", None, uem=True)
    for option in ("--audio", "--rttm", "--uem"):
        args = ["--audio", str(one), "--rttm", str(one / "reference.rttm")]
        args += [option, str(one / "reference.uem" if option == "--uem" else one)] * 2
        result = streamer("eval", *args)
        assert result.returncode == 2, (option, result.stdout)
        assert f"{option} is given twice" in result.stderr
        assert "TOTAL" not in result.stdout


def eval_rows(*args: str) -> dict[str, list[str]]:
    """The printed rows of ``streamer eval ARGS``, by their first column."""
    result = streamer("eval", *args)
    assert result.returncode == 0, result.stderr
    return {line.split()[0]: line.split() for line in result.stdout.splitlines() if line}


def test_eval_oracle_tracking_prints_the_usual_der_next_to_it(tmp_path):
    one = eval_set(tmp_path / "one", None, uem=True)
    document = tmp_path / "scores.json"
    rows = eval_rows(str(one), "--oracle-tracking", "--shift", "0,5.5", "--json",
                     str(document))
    plain_rows = eval_rows(str(one), "--shift", "0,5.5")
    assert rows["file"][-2:] == ["usual", "seeded"]
    for name in ("whole@0", "whole@5.5"):
        assert rows[name][-1] == "2"  # both reference speakers seeded
        assert rows[name][-2] == plain_rows[name][1]  # the usual run's DER
        assert rows[name][7] == "2"  # the oracle run opens no speaker beyond them
    assert rows["TOTAL"][-2:] == [plain_rows["TOTAL"][1], "4"]
    data = json.loads(document.read_text())
    assert data["oracle_tracking"] is True
    assert data["usual"]["der"] == pytest.approx(float(plain_rows["TOTAL"][1].rstrip("%")) / 100,
                                                 abs=0.0006)
    assert [f["seeded"] for f in data["files"]] == [2, 2]
    assert all(f["der"] <= f["usual"]["der"] + 0.02 for f in data["files"])


def test_eval_scores_each_file_at_several_input_levels(tmp_path):
    one = eval_set(tmp_path / "one", None, uem=True)
    document = tmp_path / "scores.json"
    rows = eval_rows(str(one), "--gain=-60,0", "--shift", "0,5.5", "--json", str(document))
    plain_rows = eval_rows(str(one), "--shift", "0,5.5")
    runs = ["whole@0@-60dB", "whole@0@+0dB", "whole@5.5@-60dB", "whole@5.5@+0dB"]
    assert [name for name in rows if name.startswith("whole")] == runs + ["whole@all"]
    # At the recorded level the runs are the plain ones; 60 dB down they are not (the
    # voice activity detector hears less of the speech): the gain is applied.
    for shift in ("0", "5.5"):
        assert rows[f"whole@{shift}@+0dB"][1:-1] == plain_rows[f"whole@{shift}"][1:-1]
        assert rows[f"whole@{shift}@-60dB"][1:7] != rows[f"whole@{shift}@+0dB"][1:7]
    data = json.loads(document.read_text())
    assert data["gains"] == [-60.0, 0.0] and data["shifts"] == [0.0, 5.5]
    assert [(f["shift"], f["gain"]) for f in data["files"]] == \
        [(0.0, -60.0), (0.0, 0.0), (5.5, -60.0), (5.5, 0.0)]
    worst = max(data["files"], key=lambda f: f["der"])
    assert data["start_points"][0]["worst"] == {"shift": worst["shift"],
                                                "gain": worst["gain"], "der": worst["der"]}
    assert data["start_points"][0]["files"] == 4
    assert rows["whole@all"][-1] == f"@{worst['shift']:g}@{worst['gain']:+g}dB"


@pytest.mark.parametrize("args, message", [
    ((), "nothing to evaluate"),
    (("--gain", "1,x", "."), "not a list of decibels"),
    (("--gain=-80", "."), "within ±60"),
    (("--rttm", "ref.rttm"), "--rttm and --uem describe --audio"),
    ((".",), "has no reference.rttm"),
    (("--shift", "1,x", "."), "not a list of seconds"),
])
def test_eval_refuses_what_it_cannot_score(tmp_path, args, message):
    result = streamer("eval", *[str(tmp_path) if a == "." else a for a in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_diarize_reads_stereo_44k_files(tmp_path):
    rate = 44100
    t = np.arange(rate * 3) / rate
    voice = 0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([voice, voice], axis=1), rate)
    result = streamer("diarize", str(path), "--json", str(tmp_path / "o.json"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "o.json").read_text())["duration"] == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"RIFF1234WAVEfmt garbage"), "cannot decode"),
    (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "no audio samples"),
    (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2], np.float32), 16000, subtype="FLOAT"),
     "NaN"),
])
def test_bad_input_gives_one_line_and_a_non_zero_exit(tmp_path, make, message):
    path = tmp_path / "input.wav"
    make(path)
    result = streamer("diarize", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and result.stderr.startswith("streamer: error:")


def test_diarize_survives_huge_finite_samples(tmp_path):
    """A float WAV with 50 ms of +-1e30 inside speech: the turns after it are those of the
    clean file, give or take a frame or two."""
    data, rate = sf.read(Path(__file__).parent / "data" / "two_voices.wav", dtype="float32")
    data = data[:20 * rate]
    results = {}
    for name, spike in (("clean", 0.0), ("spike", 1e30)):
        samples = data.copy()
        if spike:
            samples[6 * rate: 6 * rate + 800] = np.where(np.arange(800) % 2, spike, -spike)
        sf.write(tmp_path / f"{name}.wav", samples, rate, subtype="FLOAT")
        result = streamer("diarize", str(tmp_path / f"{name}.wav"), "--json",
                          str(tmp_path / f"{name}.json"))
        assert result.returncode == 0, result.stderr
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())["segments"]
    assert results["spike"][-1]["end"] > 19.0
    later, expected = ([s for s in results[name] if s["start"] > 8] for name in ("spike", "clean"))
    assert [s["speaker"] for s in later] == [s["speaker"] for s in expected]
    for turn, reference in zip(later, expected):
        assert abs(turn["start"] - reference["start"]) < 0.1
        assert abs(turn["end"] - reference["end"]) < 0.1


def test_bad_settings_are_reported_by_name(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000)
    result = streamer("diarize", str(path), "--latency", "99")
    assert result.returncode == 2 and "latency" in result.stderr
    result = streamer("diarize", str(path), "--set", "colour=red")
    assert result.returncode == 2 and "colour" in result.stderr


def test_models_lists_the_presets():
    result = streamer("models")
    assert result.returncode == 0
    assert "embedded (default)" in result.stdout and "pyannote/segmentation-3.0" in result.stdout


@needs_shared
def test_bench_prints_step_percentiles():
    result = streamer("bench", "--audio", str(SAMPLE), "--steps", "40")
    assert result.returncode == 0, result.stderr
    assert "p50" in result.stdout and "p95" in result.stdout
    assert "CPU-seconds per second of audio" in result.stdout
    # one VAD call a step; sample.wav has speech by 20 s, so windows get embedded
    assert "model rows per step: vad 1.00, ge2e " in result.stdout
    assert "never ran" not in result.stdout


def test_diarize_with_pyannote_checkpoints_from_disk(tmp_path):
    """--segmentation/--embedding files (small random weights made here), both precisions,
    and the JSON says which models ran."""
    from tests.checkpoints import write_checkpoint

    seg = write_checkpoint(tmp_path / "seg" / "pytorch_model.bin", "segmentation-3.0")
    emb = write_checkpoint(tmp_path / "emb" / "pytorch_model.bin", "wespeaker")
    audio = tmp_path / "talk.wav"
    data, rate = sf.read(Path(__file__).parent / "data" / "two_voices.wav", dtype="float32")
    sf.write(audio, data[:12 * rate], rate)
    for precision in ("fp32", "bf16"):
        document = tmp_path / f"{precision}.json"
        result = streamer("diarize", str(audio), "--segmentation", str(seg.parent),
                          "--embedding", str(emb), "--precision", precision,
                          "--set", "tau_active=0.3", "--set", "speech_threshold=0.3",
                          "--json", str(document))
        assert result.returncode == 0, result.stderr
        out = json.loads(document.read_text())
        assert out["segments"], out  # the random model's ~0.45 activations pass 0.3
        model = out["model"]
        assert model["preset"] == "pyannote" and model["embedding_precision"] == precision
        assert model["segmentation"] == str(seg.parent) and model["embedding"] == str(emb)
    result = streamer("diarize", str(audio), "--precision", "bf16")
    assert result.returncode == 2 and "--precision bf16 applies to the pyannote" in result.stderr
    result = streamer("diarize", str(audio), "--device", "cuda")
    assert result.returncode == 2 and "--device cuda applies to the pyannote" in result.stderr


def test_diarize_writes_the_overlap_aware_diarization_with_pyannote_models(tmp_path):
    from tests.checkpoints import write_checkpoint

    seg = write_checkpoint(tmp_path / "seg.bin", "segmentation-2")
    emb = write_checkpoint(tmp_path / "emb.bin", "wespeaker")
    audio = tmp_path / "talk.wav"
    data, rate = sf.read(DATA / "two_voices.wav", dtype="float32")
    sf.write(audio, data[:12 * rate], rate)
    rttm, regular, document = (tmp_path / name for name in ("x.rttm", "r.rttm", "x.json"))
    result = streamer("diarize", str(audio), "--segmentation", str(seg), "--embedding",
                      str(emb), "--set", "tau_active=0.3", "--set", "speech_threshold=0.3",
                      "--rttm", str(rttm), "--rttm-overlap", str(regular),
                      "--json", str(document))
    assert result.returncode == 0, result.stderr
    out = json.loads(document.read_text())
    exclusive = read_rttm(rttm)["talk"]
    overlap_aware = read_rttm(regular)["talk"]
    assert exclusive and overlap_aware
    assert out["config"]["outputs"] == ["overlap", "regular"]
    assert len(out["regular_segments"]) == len(overlap_aware) and "overlap" in out
    for start, end, speaker in exclusive:  # each exclusive turn within a regular one
        assert any(s <= start + 1e-3 and end <= e + 1e-3 and k == speaker
                   for s, e, k in overlap_aware)


def test_diarize_refuses_overlap_output_with_the_embedded_preset(tmp_path):
    out = tmp_path / "r.rttm"
    result = streamer("diarize", str(DATA / "two_voices.wav"), "--rttm-overlap", str(out))
    assert result.returncode == 2
    assert "embedded preset has no overlapped speech model" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--segmentation", "--embedding"])
def test_diarize_refuses_a_torchscript_checkpoint_before_its_code_runs(tmp_path, flag):
    from tests.checkpoints import write_checkpoint
    from tests.test_pyannote_loading import write_torchscript_payload

    marker = tmp_path / "pwned"
    models = {"--segmentation": write_checkpoint(tmp_path / "seg.bin", "segmentation-3.0"),
              "--embedding": write_checkpoint(tmp_path / "emb.bin", "wespeaker")}
    models[flag] = write_torchscript_payload(tmp_path / "model.pt", marker)
    audio = tmp_path / "talk.wav"
    sf.write(audio, np.zeros(16000, np.float32), 16000)
    result = streamer("diarize", str(audio), *(str(x) for item in models.items() for x in item))
    assert result.returncode == 2, result.stderr
    assert "TorchScript archive" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("bad, says", [
    ("missing/out.json", "no such folder"), ("folder", "is a folder"),
    ("good.rttm", "same file"),
], ids=["no-folder", "a-folder", "same-as-rttm"])
def test_bad_output_path_fails_before_the_work(tmp_path, bad, says):
    """Reported at once, with nothing written: the other output is not created."""
    audio = tmp_path / "talk.wav"
    sf.write(audio, np.zeros(16000, np.float32), 16000)
    (tmp_path / "folder").mkdir()
    result = streamer("diarize", str(audio), "--rttm", str(tmp_path / "good.rttm"),
                      "--json", str(tmp_path / bad))
    assert result.returncode == 2
    assert result.stderr.startswith("streamer: error: ") and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "of audio" not in result.stderr
    assert not (tmp_path / "good.rttm").exists() and not (tmp_path / "missing").exists()


def test_a_failed_run_keeps_the_previous_output(tmp_path):
    audio = tmp_path / "talk.wav"
    sf.write(audio, np.zeros(16000, np.float32), 16000)
    rttm = tmp_path / "talk.rttm"
    rttm.write_text("previous result\n")
    result = streamer("diarize", str(audio), "--rttm", str(rttm),
                      "--segmentation", str(tmp_path / "nope.bin"))
    assert result.returncode == 2 and "nope.bin: no such file" in result.stderr
    assert rttm.read_text() == "previous result\n"
    result = streamer("diarize", str(audio), "--rttm", str(rttm))
    assert result.returncode == 0 and rttm.read_text() == ""  # silence: no turns


def test_hub_models_need_the_hf_prefix(tmp_path):
    audio = tmp_path / "talk.wav"
    sf.write(audio, np.zeros(16000, np.float32), 16000)
    result = streamer("diarize", str(audio), "--segmentation", "pyannote/segmentation-3.0")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "streamer: error: pyannote/segmentation-3.0: no such file or folder; to fetch it "
        "from the Hugging Face hub, write hf:pyannote/segmentation-3.0")


def test_unreadable_input_and_output_say_permission_denied(tmp_path):
    """Run unprivileged (root reads and writes anything), in a forked child."""
    import contextlib
    import io

    from streamer import cli
    from tests.test_audio import unprivileged, unreadable_copies

    cli.build_parser()  # imports everything the child needs
    audio = tmp_path / "talk.wav"
    sf.write(audio, np.zeros(16000, np.float32), 16000)

    def diarize(*args: str) -> str:
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors):
            code = cli.main(["diarize", *args])
        return f"{code} {errors.getvalue().strip()}"

    with unreadable_copies(audio) as (readable, locked, hidden):
        for path in (locked, hidden):
            assert unprivileged(lambda: diarize(str(path))) == (
                f"2 streamer: error: {path}: permission denied")
        output = readable.parent / "out.rttm"  # a folder of root's: nobody may not write
        assert unprivileged(lambda: diarize(str(readable), "--rttm", str(output))) == (
            f"2 streamer: error: cannot write --rttm {output}: permission denied")
