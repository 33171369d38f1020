"""The client's side of a stream without sockets: message order, limits, backpressure."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streamer.errors import ProtocolError
from streamer.server import protocol
from streamer.server.inbound import Audio, Context, Inbound, Snapshot, Start, Stop


def _started(max_pending: float = 5.0, max_stream_seconds: float = 0.0, **start) -> Inbound:
    inbound = Inbound(max_pending, max_stream_seconds)
    action = inbound.receive(json.dumps({"type": "start", "sample_rate": 16000, **start}), 0.0)
    assert isinstance(action, Start) and action.message["sample_rate"] == 16000
    assert not inbound.started
    request = protocol.parse_start(action.message)
    inbound.begin(request)
    inbound.expect_context(request.context)
    assert inbound.started
    return inbound


def _pcm(seconds: float) -> bytes:
    return np.zeros(int(seconds * 16000), np.int16).tobytes()


@pytest.mark.parametrize("first, error", [
    (b"\x00\x00", "audio before start"),
    ('{"type": "stop"}', "the first message must be start"),
    ("not json", "JSON"),
])
def test_a_stream_must_begin_with_start(first, error) -> None:
    with pytest.raises(ProtocolError, match=error):
        Inbound(5.0).receive(first, 0.0)


def test_messages_after_start_ask_for_audio_snapshot_and_stop() -> None:
    inbound = _started()
    audio = inbound.receive(_pcm(0.5), 1.0)
    assert audio == Audio(0.5)
    assert inbound.audio.received == 8000
    assert isinstance(inbound.receive('{"type": "snapshot"}', 1.1), Snapshot)
    assert isinstance(inbound.receive('{"type": "stop"}', 1.2), Stop)


def test_a_second_start_and_unknown_types_are_refused() -> None:
    inbound = _started()
    with pytest.raises(ProtocolError, match="already received"):
        inbound.receive('{"type": "start", "sample_rate": 16000}', 1.0)
    with pytest.raises(protocol.UnknownMessage):
        inbound.receive('{"type": "dance"}', 1.0)


def test_audio_past_the_stream_limit_is_refused_before_it_is_queued() -> None:
    inbound = _started(max_stream_seconds=1.0)
    inbound.receive(_pcm(0.8), 0.0)
    with pytest.raises(protocol.StreamTooLong, match="1 s"):
        inbound.receive(_pcm(0.3), 0.1)
    assert inbound.audio.received == int(0.8 * 16000)
    assert protocol.close_code(protocol.StreamTooLong("x")) == 1008  # policy violation


def test_falling_behind_pauses_reading_and_warns_once() -> None:
    inbound = _started(max_pending=1.0)
    assert inbound.receive(_pcm(1.0), 0.0) == Audio(1.0)
    # 3 s of wall time later nothing was processed: 2 s of audio wait, 2 s behind
    behind = inbound.receive(_pcm(1.0), 3.0)
    assert behind.pause and behind.warning is not None
    assert behind.warning["code"] == "falling_behind" and behind.warning["behind"] == 2.0
    again = inbound.receive(_pcm(0.5), 3.5)
    assert again.pause and again.warning is None  # one warning per episode


def test_the_context_comes_first_and_is_kept_out_of_the_queue() -> None:
    """``start.context``: the first seconds of audio are handed over whole as the context,
    however the frames cut them, larger than the backlog limit and never queued."""
    inbound = _started(max_pending=2.0, context=6.25, resume_id="0" * 32)
    ramp = (np.arange(16000 * 8) % 3000).astype(np.int16)
    frames = [ramp[i:i + 4100] for i in range(0, len(ramp), 4100)]
    actions = [inbound.receive(frame.tobytes(), 1.0) for frame in frames]
    contexts = [a for a in actions if isinstance(a, Context)]
    assert len(contexts) == 1
    context = contexts[0]
    assert np.array_equal(context.samples, ramp[:100000] / 32768)
    assert all(a == Audio(0.0) for a in actions[:actions.index(context)])
    assert context.audio.seconds == pytest.approx((4100 * 25 - 100000) / 16000)
    assert inbound.audio.received == len(ramp) - 100000
    assert not inbound.audio.paused
    # What the engine cannot use is not kept: whole frames from its last context_limit on.
    inbound = _started(context=6.25, resume_id="0" * 32)
    inbound.context_limit = 2 * 16000
    actions = [inbound.receive(frame.tobytes(), 1.0) for frame in frames]
    context = next(a for a in actions if isinstance(a, Context))
    assert 2 * 16000 <= len(context.samples) < 2 * 16000 + 4100
    assert np.array_equal(context.samples, ramp[100000 - len(context.samples):100000] / 32768)


def test_a_stream_that_stops_inside_its_context_has_no_tail() -> None:
    inbound = _started(context=2.0, resume_id="0" * 32)
    assert inbound.receive(_pcm(1.0), 1.0) == Audio(0.0)
    assert isinstance(inbound.receive('{"type": "stop"}', 1.1), Stop)
    assert len(inbound.tail()) == 0 and inbound.audio.received == 0
