"""Voiceprints and identification: enrolment of one voice (refused for too little speech,
two voices or too much audio), turns and speakers named after matching voiceprints,
unknown voices left anonymous, voiceprints of other models refused; through the engine,
a real server and the CLI."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import soundfile as sf

from streamer.cli import main as cli_main
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.errors import ConfigError
from streamer.enrollment import enroll
from streamer.voiceprints import (MAX_ENROLL_SECONDS, Identifier, KnownSpeaker,
                                  VoiceprintError, read_voiceprints)
from tests.fakes import fake_frontend, tone_conversation
from tests.paths import EVAL
from tests.test_server_resume import whole_stream
from tests.test_server_support import run, running_server

LOW, HIGH = 300.0, 700.0
LOW_THEN_HIGH = tone_conversation([(LOW, 3.0), (None, 0.5), (HIGH, 3.0)])


@pytest.fixture(scope="module")
def frontend():
    return fake_frontend()


@pytest.fixture(scope="module")
def prints(frontend) -> dict[str, dict]:
    return {"low": enroll(frontend, tone_conversation([(LOW, 4.0)])),
            "high": enroll(frontend, tone_conversation([(HIGH, 4.0)]))}


def known(prints: dict[str, dict], *names: str) -> list[dict]:
    return [{"name": name, "voiceprint": prints[name]} for name in names]


def test_a_voiceprint_names_its_model_and_holds_a_unit_vector(frontend, prints) -> None:
    document = prints["low"]
    assert document["type"] == "voiceprint" and document["version"] == 1
    assert document["model"]["preset"] == "fake"
    assert document["model"]["dimension"] == len(document["vector"])
    assert np.linalg.norm(document["vector"]) == pytest.approx(1.0, abs=1e-5)
    assert document["speech"] >= 3.0
    # The same voice enrolled from other audio gives nearly the same vector; another voice
    # does not.
    again = enroll(frontend, tone_conversation([(None, 1.0), (LOW, 5.0)]))
    assert np.dot(again["vector"], document["vector"]) > 0.99
    assert np.dot(prints["high"]["vector"], document["vector"]) < 0.9


@pytest.mark.parametrize("audio, message", [
    (tone_conversation([(None, 6.0)]), "not enough speech"),
    (tone_conversation([(LOW, 1.5)]), "not enough speech"),
    (tone_conversation([(LOW, 4.0), (None, 0.5), (HIGH, 4.0)]), "2 speakers"),
    (tone_conversation([(LOW, MAX_ENROLL_SECONDS + 1.0)]), "at most 30 s"),
])
def test_enrolment_refuses_audio_that_cannot_make_one_voiceprint(frontend, audio,
                                                                 message) -> None:
    with pytest.raises(VoiceprintError, match=message):
        enroll(frontend, audio)


def test_turns_and_speakers_are_named_after_matching_voiceprints(frontend, prints) -> None:
    config = StreamConfig(known_speakers=known(prints, "high", "low"))
    turns, engine = diarize_array(frontend, LOW_THEN_HIGH, config)
    assert [(t.speaker, t.identity) for t in turns] == [("SPEAKER_00", "low"),
                                                        ("SPEAKER_01", "high")]
    assert all(t.similarity >= engine.config.identity_threshold for t in turns)
    assert turns[0].to_dict()["identity"] == "low"
    summary = {s.label: s.identity for s in engine.speakers()}
    assert summary == {"SPEAKER_00": "low", "SPEAKER_01": "high"}


def test_an_unknown_voice_keeps_its_anonymous_label(frontend, prints) -> None:
    turns, _ = diarize_array(frontend, LOW_THEN_HIGH,
                             StreamConfig(known_speakers=known(prints, "low")))
    assert [(t.speaker, t.identity) for t in turns] == [("SPEAKER_00", "low"),
                                                        ("SPEAKER_01", None)]
    assert "identity" not in turns[1].to_dict()


def test_a_threshold_above_every_similarity_names_nobody(frontend, prints) -> None:
    config = StreamConfig(known_speakers=known(prints, "low", "high"), identity_threshold=1.0)
    turns, _ = diarize_array(frontend, LOW_THEN_HIGH, config)
    assert turns and all(t.identity is None for t in turns)


def test_identification_pairs_speakers_and_voiceprints_one_to_one() -> None:
    vectors = np.eye(3)
    identifier = Identifier([KnownSpeaker("a", {"vector": [1.0, 0.0, 0.0]}),
                             KnownSpeaker("b", {"vector": [0.9, 0.1, 0.0]})], threshold=0.5)
    # Both speakers are nearest to "a"; the one-to-one pairing gives "b" to the second.
    centroids = np.array([[1.0, 0.0, 0.0], [0.8, 0.3, 0.0], vectors[2]])
    matches = identifier.match(centroids)
    assert {i: name for i, (name, _) in matches.items()} == {0: "a", 1: "b"}


def test_a_voiceprint_of_another_model_is_refused(frontend, prints) -> None:
    foreign = copy.deepcopy(prints["low"])
    foreign["model"]["embedding"] = "another encoder"
    config = StreamConfig(known_speakers=[{"name": "low", "voiceprint": foreign}])
    with pytest.raises(ConfigError, match="another model"):
        StreamingDiarizer(frontend, config)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.update(version=2), "format version"),
    (lambda p: p.update(type="speaker"), "not a voiceprint"),
    (lambda p: p.update(vector=p["vector"][:-1]), "finite numbers"),
    (lambda p: p.update(vector=[0.0] * len(p["vector"])), "not all zero"),
    (lambda p: p.update(vector=["x"] * len(p["vector"])), "finite numbers"),
    (lambda p: p.pop("model"), "does not name the model"),
    (lambda p: p.update(pitch={"median": -20.0}), "pitch must be"),
    (lambda p: p.update(pitch={"median": float("nan"), "spread": 1.0}), "pitch must be"),
    (lambda p: p.update(pitch={"median": -20.0, "spread": 0.0}), "pitch must be"),
    (lambda p: p.update(pitch={"median": 80.0, "spread": 1.0}), "pitch must be"),
    (lambda p: p.update(pitch=[-20.0, 1.0]), "pitch must be"),
])
def test_malformed_voiceprints_are_refused_with_the_reason(prints, change, message) -> None:
    document = copy.deepcopy(prints["low"])
    change(document)
    with pytest.raises(ConfigError, match=message):
        StreamConfig(known_speakers=[{"name": "low", "voiceprint": document}])


def test_known_speakers_must_have_distinct_names(prints) -> None:
    with pytest.raises(ConfigError, match="given twice"):
        StreamConfig(known_speakers=[{"name": "x", "voiceprint": prints["low"]},
                                     {"name": "x", "voiceprint": prints["high"]}])
    with pytest.raises(ConfigError, match="exactly"):
        StreamConfig(known_speakers=[{"name": "x"}])


# ------------------------------------------------------------------------ real server
def test_a_stream_with_known_speakers_names_turns_and_the_end_summary(prints) -> None:
    async def body():
        async with running_server() as server:
            return await whole_stream(server, LOW_THEN_HIGH,
                                config={"known_speakers": known(prints, "low")})

    ready, events = run(body())
    assert ready["config"]["known_speakers"] == ["low"]  # names only: prints stay private
    finals = [e for e in events if e["type"] == "turn" and e["final"]]
    assert [(e["speaker"], e.get("identity")) for e in finals] == [("SPEAKER_00", "low"),
                                                                   ("SPEAKER_01", None)]
    assert finals[0]["similarity"] >= ready["config"]["identity_threshold"]
    end = events[-1]
    assert end["type"] == "end"
    assert [(s["label"], s.get("identity")) for s in end["speakers"]] == [
        ("SPEAKER_00", "low"), ("SPEAKER_01", None)]


def test_the_server_refuses_a_foreign_voiceprint_with_bad_config(prints) -> None:
    foreign = copy.deepcopy(prints["low"])
    foreign["model"]["dimension"] += 1
    foreign["vector"].append(0.0)

    async def body():
        async with running_server() as server:
            from websockets.asyncio.client import connect

            from tests.test_server_support import url
            async with connect(url(server)) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                                          "encoding": "pcm_f32le", "config": {
                                              "known_speakers": [{"name": "low",
                                                                  "voiceprint": foreign}]}}))
                message = json.loads(await ws.recv())
                await ws.wait_closed()
                return message, ws.close_code

    message, code = run(body())
    assert message["type"] == "error" and message["code"] == "bad_config"
    assert "another model" in message["message"]
    assert code == 1008


# ------------------------------------------------------------------------------- CLI
def test_enroll_and_diarize_with_voiceprints_on_real_speech(tmp_path, capsys) -> None:
    """The embedded preset's real encoder, on two voices of the synthetic set: each is
    enrolled from 15 s of its own turns, then the whole conversation is diarized."""
    from streamer.audio import load_audio
    from streamer.rttm import read_rttm

    folder = EVAL / "synth"
    if not (folder / "dev2a.wav").exists():
        pytest.skip("needs ../shared/eval/synth")
    audio = load_audio(folder / "dev2a.wav")
    reference = read_rttm(str(folder / "reference.rttm"))["dev2a"]
    out = tmp_path / "voiceprints.json"
    names = {}
    for voice in sorted({v for *_, v in reference}):
        pieces = [audio[int(s * 16000): int(e * 16000)] for s, e, v in reference if v == voice]
        path = tmp_path / f"{voice}.wav"
        sf.write(path, np.concatenate(pieces)[: 15 * 16000], 16000)
        names[voice] = voice.split("+")[-1]
        assert cli_main(["enroll", names[voice], str(path), "--out", str(out)]) == 0
    assert [e["name"] for e in read_voiceprints(str(out))] == sorted(names.values())
    mixed = tmp_path / "mixed.wav"
    sf.write(mixed, audio[: 25 * 16000], 16000)
    assert cli_main(["enroll", "both", str(mixed), "--out", str(out)]) == 2
    assert "speakers" in capsys.readouterr().err
    result = tmp_path / "result.json"
    assert cli_main(["diarize", str(folder / "dev2a.wav"), "--voiceprints", str(out),
                     "--json", str(result), "--no-progress"]) == 0
    document = json.loads(result.read_text())
    assert sorted(i["identity"] for i in document["identities"].values()) == sorted(
        names.values())
    # Every second of each voice's reference speech carries its own name in the output.
    named = right = 0.0
    for start, end, voice in reference:
        for segment in document["segments"]:
            overlap = min(end, segment["end"]) - max(start, segment["start"])
            if overlap > 0:
                named += overlap
                identity = document["identities"].get(segment["speaker"], {}).get("identity")
                right += overlap * (identity == names[voice])
    assert right / named > 0.9



def test_the_python_api_enrolls_and_identifies(frontend, tmp_path) -> None:
    from streamer.pipeline import Pipeline
    from streamer.voiceprints import add_voiceprint

    pipeline = Pipeline(frontend=frontend)
    low = pipeline.enroll({"waveform": tone_conversation([(LOW, 4.0)]), "sample_rate": 16000})
    path = tmp_path / "prints.json"
    add_voiceprint(str(path), "low", low)
    for voiceprints in (path, str(path), [{"name": "low", "voiceprint": low}]):
        result = pipeline({"waveform": LOW_THEN_HIGH, "sample_rate": 16000},
                          voiceprints=voiceprints)
        assert {label: name for label, (name, _) in result.identities.items()} == {
            "SPEAKER_00": "low"}
        assert result.to_json()["identities"]["SPEAKER_00"]["identity"] == "low"
    with pytest.raises(VoiceprintError, match="2 speakers"):
        pipeline.enroll({"waveform": LOW_THEN_HIGH, "sample_rate": 16000})
