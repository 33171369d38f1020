"""scripts/window_bound.py: what the embedded preset's windows allow with the speech known
and every window given its nearest reference speaker."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.audio import load_audio
from streamer.models.embedded import EmbeddedFrontend
from streamer.rttm import read_rttm

from tests.paths import DATA, script_module


@pytest.fixture(scope="module")
def script():
    with script_module("window_bound") as module:
        yield module


@pytest.fixture(scope="module")
def frontend() -> EmbeddedFrontend:
    return EmbeddedFrontend()


@pytest.fixture(scope="module")
def conversation() -> tuple[np.ndarray, list]:
    return (load_audio(DATA / "two_voices.wav"),
            read_rttm(DATA / "two_voices.rttm")["two_voices"])


def test_the_windows_of_two_distinct_voices_name_them_right(script, frontend,
                                                             conversation) -> None:
    samples, reference = conversation
    score = script.bound(frontend, samples, reference)
    speech = sum(end - start for start, end, _ in reference)
    assert score.speech == pytest.approx(speech, abs=0.05)
    assert score.missed == 0.0  # the fixture has no overlapped speech
    # Only frames next to a change of voice, which windows straddle, may be confused.
    assert 0.0 <= score.confused < 0.05 * speech


def test_a_reference_that_mixes_the_voices_is_confused(script, frontend,
                                                       conversation) -> None:
    # The same turns, named so that each "speaker" holds both voices: no centroid can
    # stand for either, and the windows cannot give the reference's labels.
    samples, reference = conversation
    mixed = [(start, end, "ab"[(index // 2) % 2]) for index, (start, end, _)
             in enumerate(reference)]
    right = script.bound(frontend, samples, reference)
    wrong = script.bound(frontend, samples, mixed)
    assert wrong.confused > right.confused + 0.2 * wrong.speech


def test_overlapped_speech_is_missed_beyond_one_speaker(script, frontend,
                                                        conversation) -> None:
    samples, reference = conversation
    start, end, speaker = reference[1]
    overlapped = reference + [(start, start + 2.0, "carol")]
    score = script.bound(frontend, samples, overlapped)
    assert score.missed == pytest.approx(2.0, abs=0.02)
    assert score.speech == pytest.approx(sum(e - s for s, e, _ in overlapped), abs=0.05)


def test_audio_without_any_window_names_nobody(script, frontend) -> None:
    silence = np.zeros(10 * 16000, np.float32)
    score = script.bound(frontend, silence, [(1.0, 4.0, "alice")])
    assert score.speech == pytest.approx(3.0, abs=0.02)
    assert score.missed == pytest.approx(3.0, abs=0.02) and score.confused == 0.0


def test_the_command_prints_each_file_and_the_totals(script, tmp_path, capsys) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "two_voices.wav").symlink_to(DATA / "two_voices.wav")
    (folder / "reference.rttm").write_text((DATA / "two_voices.rttm").read_text())
    assert script.main([str(folder), "--shift", "0,3.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == {"set/two_voices@0", "set/two_voices@3.5", "set/TOTAL", "TOTAL"}
    for name, (der, missed, confused) in rows.items():
        assert float(der.rstrip("%")) == pytest.approx(
            float(missed.rstrip("%")) + float(confused.rstrip("%")), abs=0.11)
