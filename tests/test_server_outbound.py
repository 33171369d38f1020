"""The processing side of a stream, without sockets or an event loop: what to feed the
engine and when, the messages for what it decided, when reading resumes, when the state
is due to be saved; and a real engine driven by it decides as file mode does."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.audio import SAMPLE_RATE, load_audio
from streamer.config import DEFAULT_LATENCY, StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.events import Turn
from streamer.models.embedded import EmbeddedFrontend
from streamer.server.audioqueue import AudioQueue
from streamer.server.outbound import Done, Feed, Outbound, Wait

from tests.paths import DATA


def test_feeds_wait_for_a_step_are_capped_and_end_once_the_input_is_over() -> None:
    outbound = Outbound(AudioQueue(max_pending=10.0), max_feed=1.0)
    step = 8000
    assert isinstance(outbound.next(step), Wait)  # nothing queued
    outbound.audio.add(np.zeros(5000, np.float32), now=1.0)
    assert isinstance(outbound.next(step), Wait)  # short of the engine's next step
    outbound.audio.add(np.ones(30000, np.float32), now=2.0)
    feed = outbound.next(step)
    assert isinstance(feed, Feed) and len(feed.samples) == SAMPLE_RATE  # max_feed: 1 s
    assert feed.ready_at == 2.0  # the frame that completed the step
    assert np.array_equal(feed.samples[:5000], np.zeros(5000))
    rest = outbound.next(step)
    assert isinstance(rest, Feed) and len(rest.samples) == SAMPLE_RATE
    outbound.audio.add(np.ones(100, np.float32), now=3.0)
    assert isinstance(outbound.next(step), Wait)  # 3100 samples: short of a step
    outbound.input_done = True  # the end of the input feeds what is left, step or not
    last = outbound.next(step)
    assert isinstance(last, Feed) and len(last.samples) == 3100
    assert isinstance(outbound.next(step), Done)


def test_reading_resumes_once_the_backlog_is_down_to_half_the_limit() -> None:
    outbound = Outbound(AudioQueue(max_pending=1.0), max_feed=0.5)
    pressure = outbound.audio.add(np.zeros(2 * SAMPLE_RATE, np.float32), now=0.0)
    assert pressure.pause
    first = outbound.next(8000)
    assert not outbound.fed(len(first.samples), [], 0.5).resume  # 1.5 s still queued
    second = outbound.next(8000)
    assert not outbound.fed(len(second.samples), [], 1.0).resume  # 1.0 s
    third = outbound.next(8000)
    answer = outbound.fed(len(third.samples), [], 1.5)
    assert answer.resume and answer.backlog == pytest.approx(0.5)
    assert answer.seconds == pytest.approx(0.5)


def test_the_state_is_due_every_save_interval_of_processed_audio() -> None:
    outbound = Outbound(AudioQueue(max_pending=10.0), max_feed=2.0, save_interval=5.0)
    due = [outbound.fed(0, [], position).save for position in (1.0, 4.9, 5.0, 7.0, 9.9, 10.0)]
    assert due == [False, False, True, False, False, True]
    never = Outbound(AudioQueue(max_pending=10.0), max_feed=2.0, save_interval=0.0)
    assert not any(never.fed(0, [], position).save for position in (5.0, 50.0))


def test_messages_carry_a_resumed_streams_offset() -> None:
    turn = Turn(0, "SPEAKER_00", 1.0, 2.5, final=True)
    outbound = Outbound(AudioQueue(max_pending=10.0), max_feed=2.0, offset=60.0)
    [message] = outbound.fed(0, [turn], 0.0).messages
    assert (message["start"], message["end"], message["speaker"]) == (61.0, 62.5, "SPEAKER_00")
    assert message == {**turn.to_dict(), "start": 61.0, "end": 62.5}


def test_an_engine_fed_as_outbound_says_decides_as_file_mode() -> None:
    frontend = EmbeddedFrontend()
    samples = load_audio(DATA / "two_voices.wav")
    engine = StreamingDiarizer(frontend)
    outbound = Outbound(AudioQueue(max_pending=4.0), max_feed=2.0)
    rng = np.random.default_rng(3)
    sent, offset, now = [], 0, 0.0
    while True:
        if offset < len(samples):  # frames of random sizes, as clients send them
            size = int(rng.integers(100, 12000))
            outbound.audio.add(samples[offset: offset + size], now)
            offset += size
            now += size / SAMPLE_RATE
        else:
            outbound.input_done = True
        action = outbound.next(engine.samples_to_next_step)
        if isinstance(action, Done):
            break
        if isinstance(action, Feed):
            events = engine.feed(action.samples)
            sent += outbound.fed(len(action.samples), events, engine.position).messages
    sent += outbound.messages(engine.flush())
    finals = [m for m in sent if m["type"] == "turn" and m["final"]]
    expected, _ = diarize_array(frontend, samples, StreamConfig(latency=DEFAULT_LATENCY))
    assert len(expected) >= 4
    assert [(m["start"], m["end"], m["speaker"]) for m in finals] == \
        [(t.to_dict()["start"], t.to_dict()["end"], t.speaker) for t in expected]
