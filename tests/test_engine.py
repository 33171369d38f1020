"""The streaming engine with fake models: invariants of its events."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from tests.fakes import fake_frontend, tone_conversation

A, B = 300.0, 700.0
CONVERSATION = [(None, 1.0), (A, 3.0), (None, 0.5), (B, 2.5), (A, 2.0), (None, 1.0), (B, 3.0),
                (A, 1.5), (None, 0.5)]


def run(engine: StreamingDiarizer, audio: np.ndarray, chunk: int = 1600) -> list:
    events = []
    for offset in range(0, len(audio), chunk):
        events += engine.feed(audio[offset: offset + chunk])
    return events + engine.flush()


def finals(events: list) -> list:
    return [e for e in events if e.final]


def test_two_alternating_speakers_get_two_labels_matching_the_tones():
    audio = tone_conversation(CONVERSATION)
    turns = finals(run(StreamingDiarizer(fake_frontend()), audio))
    assert len({t.speaker for t in turns}) == 2
    expected = [(1.0, 4.0, A), (4.5, 7.0, B), (7.0, 9.0, A), (10.0, 13.0, B), (13.0, 14.5, A)]
    assert len(turns) == len(expected)
    label_of = {}
    for turn, (start, end, tone) in zip(turns, expected):
        assert turn.start == pytest.approx(start, abs=0.05)
        assert turn.end == pytest.approx(end, abs=0.05)
        assert label_of.setdefault(tone, turn.speaker) == turn.speaker
    assert label_of[A] != label_of[B]


def test_turns_never_overlap_and_times_only_increase():
    audio = tone_conversation(CONVERSATION * 3)
    events = run(StreamingDiarizer(fake_frontend()), audio, chunk=777)
    turns = finals(events)
    assert len(turns) >= 10
    for turn in turns:
        assert turn.end > turn.start >= 0
    for before, after in zip(turns, turns[1:]):
        assert after.start >= before.end
        assert after.id == before.id + 1
    for event in events:  # interim turns describe the open turn: never before a final one
        if not event.final:
            closed = [t for t in turns if t.id < event.id]
            assert all(event.start >= t.end for t in closed)


def test_final_turns_never_change_and_interims_precede_their_final():
    audio = tone_conversation(CONVERSATION)
    events = run(StreamingDiarizer(fake_frontend()), audio)
    seen_final: dict[int, object] = {}
    for event in events:
        if event.final:
            assert event.id not in seen_final, "a final turn was sent twice"
            seen_final[event.id] = event
        else:
            assert event.id not in seen_final, "an interim update came after its final turn"
    assert sorted(seen_final) == list(range(5))  # one final turn per stretch of one voice
    interims = {event.id for event in events if not event.final}
    assert interims == set(seen_final), "every final turn is shown as an interim one first"


def test_silence_gives_no_turns():
    engine = StreamingDiarizer(fake_frontend())
    events = run(engine, np.zeros(16000 * 12, np.float32))
    assert events == []
    assert engine.speakers() == []


def test_reset_starts_again_at_zero_with_fresh_speakers():
    engine = StreamingDiarizer(fake_frontend())
    first = finals(run(engine, tone_conversation([(None, 2.0), (B, 3.0)])))
    engine.reset()
    assert engine.position == 0
    second = finals(run(engine, tone_conversation([(A, 2.0), (None, 1.0)])))
    assert first[0].start == pytest.approx(2.0, abs=0.05)
    assert second[0].start == pytest.approx(0.0, abs=0.05)
    assert second[0].speaker == "SPEAKER_00" and second[0].id == 0


def test_chunk_size_does_not_change_the_result():
    audio = tone_conversation(CONVERSATION)
    reference = finals(run(StreamingDiarizer(fake_frontend()), audio, chunk=8000))
    for chunk in (160, 3333, 50000):
        assert finals(run(StreamingDiarizer(fake_frontend()), audio, chunk=chunk)) == reference


def test_first_interim_comes_after_the_first_step_not_after_the_buffer():
    engine = StreamingDiarizer(fake_frontend())
    audio = tone_conversation([(A, 3.0)])
    first_event_at = None
    for offset in range(0, len(audio), 800):
        if engine.feed(audio[offset: offset + 800]) and first_event_at is None:
            first_event_at = engine.position
    assert first_event_at is not None and first_event_at <= 1.0


def test_final_decisions_wait_for_latency():
    # the first turn ends at 4 s, so both latencies let it become final while audio still
    # comes in: a run without any final turn before flush() would prove nothing
    audio = tone_conversation([(A, 4.0), (B, 6.0)])
    for latency in (0.5, 3.0):
        engine = StreamingDiarizer(fake_frontend(), StreamConfig(latency=latency))
        decided = []
        for offset in range(0, len(audio), 8000):
            for event in engine.feed(audio[offset: offset + 8000]):
                if event.final:
                    assert event.end <= engine.position - latency + 1e-6, (latency, event)
                    decided.append(event)
        assert decided, f"no final turn before the end of the stream at latency {latency}"
        assert decided[0].end == pytest.approx(4.0, abs=0.05)


def test_file_mode_decides_later_and_with_the_live_latency_gives_the_live_turns():
    audio = tone_conversation(CONVERSATION)
    in_file, engine = diarize_array(fake_frontend(), audio, chunk=0.1)
    assert engine.config.latency == engine.config.duration
    live = finals(run(StreamingDiarizer(fake_frontend()), audio, chunk=1600))
    assert live and live[0].end < 5.0  # the live stream decided turns as audio came
    as_live, engine = diarize_array(fake_frontend(), audio, StreamConfig(latency=2.0),
                                    chunk=0.1)
    assert engine.config.latency == 2.0
    assert as_live == live
    assert len({t.speaker for t in in_file}) == 2


def test_min_duration_on_drops_blips_and_min_duration_off_bridges_gaps():
    audio = tone_conversation([(B, 2.0), (A, 2.0), (None, 0.3), (A, 2.0), (B, 0.2), (None, 2.0),
                               (A, 1.0)])
    plain = finals(run(StreamingDiarizer(fake_frontend(), StreamConfig(min_duration_off=0)),
                       audio))
    assert [(round(t.start, 1), round(t.end, 1)) for t in plain] == [
        (0.0, 2.0), (2.0, 4.0), (4.3, 6.3), (6.3, 6.5), (8.5, 9.5)]
    smooth = finals(run(StreamingDiarizer(
        fake_frontend(), StreamConfig(min_duration_on=0.5, min_duration_off=0.5)), audio))
    assert [(round(t.start, 1), round(t.end, 1)) for t in smooth] == [
        (0.0, 2.0), (2.0, 6.3), (8.5, 9.5)]
    assert [t.speaker for t in smooth] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]


def test_a_voice_too_short_to_embed_is_not_made_a_new_speaker():
    audio = tone_conversation([(A, 2.0), (B, 0.2), (None, 2.0)])
    turns = finals(run(StreamingDiarizer(fake_frontend()), audio))
    assert {t.speaker for t in turns} == {"SPEAKER_00"}
    assert turns[-1].end == pytest.approx(2.2, abs=0.05)


def test_a_stream_whose_only_voice_is_too_short_to_embed_still_gets_its_final_turn():
    # No speaker can be opened, but the speech was shown as SPEAKER_00 in the interim
    # view: the final turn keeps it rather than losing it.
    audio = tone_conversation([(None, 1.0), (A, 0.3), (None, 2.0)])
    engine = StreamingDiarizer(fake_frontend())
    events = run(engine, audio)
    assert len(engine.speakers()) <= 1
    assert [(t.speaker, round(t.start, 1), round(t.end, 1)) for t in finals(events)] == [
        ("SPEAKER_00", 1.0, 1.3)]
    assert [t.speaker for t in events if not t.final] == ["SPEAKER_00"]


def test_max_speakers_caps_the_number_of_labels():
    audio = tone_conversation(CONVERSATION)
    turns = finals(run(StreamingDiarizer(fake_frontend(), StreamConfig(max_speakers=1)), audio))
    assert {t.speaker for t in turns} == {"SPEAKER_00"}


def test_speakers_summary_counts_final_speech():
    audio = tone_conversation(CONVERSATION)
    turns, engine = diarize_array(fake_frontend(), audio)
    summary = {s.label: s for s in engine.speakers()}
    for label in {t.speaker for t in turns}:
        expected = sum(t.duration for t in turns if t.speaker == label)
        assert summary[label].speech == pytest.approx(expected)
        assert len(summary[label].embedding) == 8


def test_feed_after_flush_is_refused_until_reset():
    engine = StreamingDiarizer(fake_frontend())
    engine.feed(np.zeros(8000, np.float32))
    engine.flush()
    assert engine.flush() == []
    with pytest.raises(RuntimeError, match="reset"):
        engine.feed(np.zeros(10, np.float32))
    engine.reset()
    assert engine.feed(np.zeros(10, np.float32)) == []


def test_short_model_chunk_sets_the_buffer_duration():
    engine = StreamingDiarizer(fake_frontend(chunk_duration=5.0))
    assert engine.config.duration == 5.0
    assert engine.config.latency == 2.0
