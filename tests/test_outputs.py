"""Opt-in stream outputs next to the exclusive turns: speech and overlapped speech regions
and the regular (overlap-aware) diarization, in the engine and through a real server."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, run_chunks
from streamer.errors import ConfigError
from streamer.events import Region, Turn
from streamer.regions import regular_frames
from tests.fakes import fake_frontend, tone_conversation
from tests.test_server_support import open_stream, run, running_server, stream

ALL = ["speech", "overlap", "regular"]


def overlapping_conversation() -> np.ndarray:
    """300 Hz alone 0-6 s, both tones 6-9 s, 700 Hz alone 9-14 s, silence, 300 Hz 16-20 s."""
    a = tone_conversation([(300.0, 9.0), (None, 7.0), (300.0, 4.0)])
    b = tone_conversation([(None, 6.0), (700.0, 8.0), (None, 6.0)])
    return a + b


def diarize(audio: np.ndarray, outputs: list[str], chunk: float = 0.5):
    size = int(chunk * 16000)
    return run_chunks(fake_frontend(), [audio[i:i + size] for i in range(0, len(audio), size)],
                      StreamConfig(outputs=outputs))


def spans(regions: list[Region], kind: str, speaker: str | None = None) -> list[tuple]:
    return [(r.start, r.end) for r in regions
            if r.kind == kind and (speaker is None or r.speaker == speaker)]


def covered(intervals: list[tuple], start: float, end: float) -> bool:
    return any(s <= start + 1e-6 and end <= e + 1e-6 for s, e in intervals)


def test_overlap_and_speech_regions_follow_the_audio() -> None:
    turns, regions, _ = diarize(overlapping_conversation(), ALL)
    (overlap,) = spans(regions, "overlap")
    assert overlap == pytest.approx((6.0, 9.0), abs=0.1)
    speech = spans(regions, "speech")
    assert len(speech) == 2
    assert speech[0] == pytest.approx((0.0, 14.0), abs=0.1)
    assert speech[1] == pytest.approx((16.0, 20.0), abs=0.1)
    assert all(r.final for r in regions)


def test_regular_turns_extend_the_exclusive_ones_with_the_overlapping_speaker() -> None:
    turns, regions, _ = diarize(overlapping_conversation(), ALL)
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    for turn in turns:  # every exclusive turn lies inside a regular turn of its speaker
        assert covered(spans(regions, "regular", turn.speaker), turn.start, turn.end)
    second = spans(regions, "regular", "SPEAKER_01")
    assert len(second) == 1
    start, end = second[0]
    # The second voice is regular before its exclusive turn starts at 9 s: from the
    # moment it is a known speaker (it first speaks only in overlap), to its end.
    assert 6.0 <= start < 9.0 - 0.5 and end == pytest.approx(14.0, abs=0.1)
    first = spans(regions, "regular", "SPEAKER_00")
    assert first[0] == pytest.approx((0.0, 9.0), abs=0.1)
    ids = [r.id for r in regions if r.kind == "regular"]
    assert ids == list(range(len(ids)))


def test_outputs_do_not_change_the_turns_and_do_not_depend_on_chunk_sizes() -> None:
    audio = overlapping_conversation()
    plain, none, _ = diarize(audio, [])
    assert none == []
    turns, regions, _ = diarize(audio, ALL)
    assert turns == plain
    _, other, _ = diarize(audio, ALL, chunk=0.37)
    assert sorted(map(str, other)) == sorted(map(str, regions))


def test_events_come_from_feed_and_serialise() -> None:
    engine = StreamingDiarizer(fake_frontend(), StreamConfig(outputs=["overlap", "regular"]))
    audio = overlapping_conversation()
    events = []
    for offset in range(0, len(audio), 4000):
        events += engine.feed(audio[offset: offset + 4000])
    events += engine.flush()
    kinds = {e.to_dict()["type"] for e in events}
    assert kinds == {"turn", "overlap", "regular_turn"}
    first = next(e for e in events if isinstance(e, Region) and e.kind == "regular")
    assert first.to_dict() == {"type": "regular_turn", "id": 0, "speaker": "SPEAKER_00",
                               "start": 0.0, "end": 9.0, "final": True}
    assert not any(isinstance(e, Region) and e.kind == "speech" for e in events)
    assert all(isinstance(e, (Turn, Region)) for e in events)


def test_regular_frames_adds_the_next_speakers_up_to_the_count() -> None:
    labels = np.array([0, 0, 1, -1, 2])
    activations = np.array([[0.9, 0.8, 0.1], [0.9, 0.0, 0.0], [0.7, 0.8, 0.6],
                            [0.5, 0.5, 0.0], [0.1, 0.2, 0.9]])
    count = np.array([2.0, 2.2, 2.6, 2.0, 1.4])
    active = regular_frames(labels, activations, count)
    assert active.tolist() == [
        [True, True, False],    # count 2: the next most active joins
        [True, False, False],   # nobody else has any activation
        [True, True, True],     # count 3
        [False, False, False],  # no exclusive speaker: no speech
        [False, False, True],   # count rounds to 1
    ]


@pytest.mark.parametrize("bad", ["speech", ["speech", "words"], 1, None])
def test_bad_outputs_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match="output"):
        StreamConfig(outputs=bad)


def test_a_frontend_without_overlap_model_refuses_overlap_outputs() -> None:
    frontend = fake_frontend()
    frontend.detects_overlap = False
    frontend.name = "embedded"
    with pytest.raises(ConfigError, match="embedded preset has no overlapped speech model"):
        StreamingDiarizer(frontend, StreamConfig(outputs=["regular"]))
    StreamingDiarizer(frontend, StreamConfig(outputs=["speech"]))


def test_a_real_server_streams_the_requested_outputs() -> None:
    audio = overlapping_conversation()

    async def body():
        async with running_server() as server:
            return await stream(server, audio, config={"outputs": ["overlap", "speech"]})

    ready, events, code = run(body())
    assert code == 1000 and ready["config"]["outputs"] == ["speech", "overlap"]
    overlap = [e for e in events if e["type"] == "overlap"]
    assert [(e["start"], e["end"]) for e in overlap] == [pytest.approx((6.0, 9.0), abs=0.1)]
    assert [e["type"] for e in events if e["type"] == "regular_turn"] == []
    assert len([e for e in events if e["type"] == "speech"]) == 2
    assert events[-1]["type"] == "end"


def test_a_real_server_refuses_overlap_outputs_without_an_overlap_model() -> None:
    frontend = fake_frontend()
    frontend.detects_overlap = False

    async def body():
        async with running_server(frontend) as server:
            with pytest.raises(AssertionError) as failure:
                await open_stream(server, config={"outputs": ["overlap"]})
            return failure.value

    text = str(run(body()))
    assert "'code': 'bad_config'" in text and "no overlapped speech model" in text
