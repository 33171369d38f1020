"""Oracle tracking (streamer eval --oracle-tracking): the speaker memory seeded with the
reference speakers, to tell the tracking's error from the front end's."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.audio import load_audio
from streamer.engine import diarize_array
from streamer.events import speaker_label
from streamer.models.embedded import EmbeddedFrontend
from streamer.oracle import diarize_with_oracle, oracle_centroids, oracle_state
from streamer.rttm import read_rttm

from tests.paths import DATA

# Alice speaks first; named so that her name sorts second, the seeded speakers come in the
# names' order: a tracker that opened speakers as they come would call her SPEAKER_00.
NAMES = {"alice": "zed", "bob": "amy"}


@pytest.fixture(scope="module")
def frontend() -> EmbeddedFrontend:
    return EmbeddedFrontend()


@pytest.fixture(scope="module")
def conversation() -> tuple[np.ndarray, list]:
    reference = read_rttm(DATA / "two_voices.rttm")["two_voices"]
    return (load_audio(DATA / "two_voices.wav"),
            [(start, end, NAMES[speaker]) for start, end, speaker in reference])


def _majority(turns, start: float, end: float) -> str | None:
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn.end) - max(start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    return max(overlap, key=overlap.get) if overlap else None


def test_centroids_are_each_reference_speakers_voice(frontend, conversation):
    samples, reference = conversation
    centroids, usual = oracle_centroids(frontend, samples, reference)
    assert list(centroids) == ["amy", "zed"]
    for vector in centroids.values():
        assert np.linalg.norm(vector) == pytest.approx(1.0)
    # each centroid is its own voice: nearer the speaker the usual run gave that voice
    plain, engine = diarize_array(frontend, samples, chunk=5.0)
    speakers = {speaker.label: np.asarray(speaker.embedding) for speaker in engine.speakers()}
    for name, vector in centroids.items():
        turn = next(t for t in reference if t[2] == name)
        found = _majority(usual, turn[0], turn[1])
        nearest = max(speakers, key=lambda label: float(speakers[label] @ vector))
        assert nearest == found, name
    # the first pass is the usual run, as file mode streams it
    assert [(t.start, t.end, t.speaker) for t in usual] == \
        [(t.start, t.end, t.speaker) for t in plain]


def test_oracle_run_keeps_the_seeded_speakers_and_opens_no_other(frontend, conversation):
    samples, reference = conversation
    # a reference speaker "speaking" only in the silence before the first word has no
    # local speaker of its own, so it is not seeded
    ghost = [(0.0, 0.3, "ghost")]
    turns, usual, seeded = diarize_with_oracle(frontend, samples, ghost + reference)
    assert seeded == 2
    assert {t.speaker for t in turns} == {speaker_label(0), speaker_label(1)}
    assert _majority(usual, 0.5, 4.7) == speaker_label(0)  # usual: in order of appearance
    for start, end, name in reference:
        expected = speaker_label(["amy", "zed"].index(name))
        assert _majority(turns, start, end) == expected, (start, name)


def test_nothing_to_seed_gives_the_usual_run(frontend, conversation):
    samples, _ = conversation
    turns, usual, seeded = diarize_with_oracle(frontend, samples, [(0.0, 0.3, "ghost")])
    assert seeded == 0 and turns == usual


def test_a_seeded_state_is_a_valid_speaker_state(frontend):
    state = oracle_state(frontend, [np.eye(256)[0], np.eye(256)[1]])
    assert [s["label"] for s in state["speakers"]] == [speaker_label(0), speaker_label(1)]
    from streamer.engine import StreamingDiarizer

    engine = StreamingDiarizer(frontend)
    engine.restore(state)
    assert [s.label for s in engine.speakers()] == [speaker_label(0), speaker_label(1)]
