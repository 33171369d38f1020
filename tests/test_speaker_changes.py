"""speaker_start / speaker_end events: early, paired, and consistent with the turns."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.changes import ChangeTracker
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer
from streamer.events import SpeakerChange, Turn
from tests.fakes import fake_frontend, tone_conversation
from tests.test_server_support import run, running_server, stream

SEGMENTS = [(300.0, 3.0), (None, 1.0), (700.0, 3.0), (None, 0.5), (300.0, 2.0)]


def timed_events(audio: np.ndarray, outputs=("speaker_changes",), chunk: int = 1600):
    """``[(stream position when produced, event)]``, flush events at the end."""
    engine = StreamingDiarizer(fake_frontend(), StreamConfig(outputs=list(outputs)))
    timed = []
    for offset in range(0, len(audio), chunk):
        position = min(offset + chunk, len(audio)) / 16000
        timed += [(position, event) for event in engine.feed(audio[offset: offset + chunk])]
    timed += [(len(audio) / 16000, event) for event in engine.flush()]
    return timed


def test_starts_come_within_a_step_and_ends_long_before_the_final_turn() -> None:
    timed = timed_events(tone_conversation(SEGMENTS))
    starts = [(p, e) for p, e in timed if isinstance(e, SpeakerChange)
              and e.kind == "speaker_start"]
    ends = [(p, e) for p, e in timed if isinstance(e, SpeakerChange) and e.kind == "speaker_end"]
    finals = {e.id: (p, e) for p, e in timed if isinstance(e, Turn) and e.final}
    assert [(e.speaker, e.time) for _, e in starts] == [
        ("SPEAKER_00", 0.0), ("SPEAKER_01", 4.0), ("SPEAKER_00", 7.5)]
    for position, event in starts:  # within one 0.5 s step (plus the chunk) of the speech
        assert position - event.time <= 0.6 + 1e-9
    assert [e.turn for _, e in ends] == [e.turn for _, e in starts]  # one end per start
    for position, event in ends[:-1]:  # the last one ends with the stream
        final_at, final = finals[event.turn]
        assert event.time == pytest.approx(final.end, abs=0.05)
        assert position - event.time <= 0.6 + 1e-9
        assert position < final_at  # sooner than the final turn (latency 2 s)
    assert not any(e.retracted for _, e in ends)


def test_every_start_has_one_end_and_the_pairs_are_the_final_turns() -> None:
    audio = tone_conversation(SEGMENTS * 3)
    timed = timed_events(audio, chunk=2731)
    changes = [e for _, e in timed if isinstance(e, SpeakerChange)]
    open_turns: dict[int, str] = {}
    kept = []
    for change in changes:
        if change.kind == "speaker_start":
            assert change.turn not in open_turns
            open_turns[change.turn] = change.speaker
        else:
            assert open_turns.pop(change.turn) == change.speaker
            if not change.retracted:
                kept.append((change.turn, change.speaker))
    assert not open_turns
    finals = [(e.id, e.speaker) for _, e in timed if isinstance(e, Turn) and e.final]
    assert sorted(set(kept)) == sorted(finals)


def test_a_relabelled_turn_is_retracted_and_announced_again() -> None:
    tracker = ChangeTracker()
    view = Turn(0, "SPEAKER_00", 1.0, 1.5, final=False)
    assert [c.kind for c in tracker.update([], view)] == ["speaker_start"]
    relabelled = Turn(0, "SPEAKER_01", 1.0, 2.0, final=False)
    assert tracker.update([], relabelled) == [
        SpeakerChange("speaker_end", 0, "SPEAKER_00", 1.5, retracted=True),
        SpeakerChange("speaker_start", 0, "SPEAKER_01", 1.0)]
    final = Turn(0, "SPEAKER_00", 1.0, 2.5, final=True)  # the final view disagrees again
    assert tracker.update([final], None) == [
        SpeakerChange("speaker_end", 0, "SPEAKER_01", 2.0, retracted=True),
        SpeakerChange("speaker_start", 0, "SPEAKER_00", 1.0),
        SpeakerChange("speaker_end", 0, "SPEAKER_00", 2.5)]
    assert tracker.flush() == []


def test_a_turn_that_resumes_is_started_again_and_its_final_adds_nothing() -> None:
    tracker = ChangeTracker()
    tracker.update([], Turn(3, "SPEAKER_00", 1.0, 2.0, final=False))
    assert tracker.update([], None) == [SpeakerChange("speaker_end", 3, "SPEAKER_00", 2.0)]
    assert tracker.update([], Turn(3, "SPEAKER_00", 1.0, 2.6, final=False)) == [
        SpeakerChange("speaker_start", 3, "SPEAKER_00", 1.0)]
    assert tracker.update([], None) == [SpeakerChange("speaker_end", 3, "SPEAKER_00", 2.6)]
    assert tracker.update([Turn(3, "SPEAKER_00", 1.0, 2.6, final=True)], None) == []


def test_a_final_turn_never_shown_gets_its_pair_with_it() -> None:
    tracker = ChangeTracker()
    assert tracker.update([Turn(0, "SPEAKER_02", 4.0, 4.2, final=True)], None) == [
        SpeakerChange("speaker_start", 0, "SPEAKER_02", 4.0),
        SpeakerChange("speaker_end", 0, "SPEAKER_02", 4.2)]


def test_changes_do_not_alter_the_turns() -> None:
    audio = tone_conversation(SEGMENTS)
    with_changes = [e for _, e in timed_events(audio) if isinstance(e, Turn)]
    without = [e for _, e in timed_events(audio, outputs=()) if isinstance(e, Turn)]
    assert with_changes == without


def test_a_real_server_sends_speaker_changes() -> None:
    audio = tone_conversation(SEGMENTS)

    async def body():
        async with running_server() as server:
            return await stream(server, audio, config={"outputs": ["speaker_changes"]})

    ready, events, code = run(body())
    assert code == 1000 and ready["config"]["outputs"] == ["speaker_changes"]
    changes = [e for e in events if e["type"] in ("speaker_start", "speaker_end")]
    assert changes[0] == {"type": "speaker_start", "turn": 0, "speaker": "SPEAKER_00",
                          "time": 0.0}
    assert [e["type"] for e in changes].count("speaker_start") == 3
    ends = [e for e in changes if e["type"] == "speaker_end"]
    assert [e["turn"] for e in ends] == [e["turn"] for e in changes
                                         if e["type"] == "speaker_start"]
    assert all(e["retracted"] is False for e in ends)
