"""How a stream ends, without sockets: the steps and close code for each cause."""
from __future__ import annotations

import pytest

from streamer.errors import ConfigError, StreamerError
from streamer.server.ending import ending
from streamer.server.protocol import IdleTimeout, SlowClient, StreamTooLong


def test_stop_processes_everything_then_sends_end_and_closes_normally() -> None:
    plan = ending(None, started=True)
    assert (plan.drain, plan.end, plan.reconnect, plan.error) == (True, True, False, None)
    assert (plan.code, plan.reason, plan.outcome) == (1000, "", "stop")


def test_a_drain_asks_the_client_to_reconnect_and_closes_going_away() -> None:
    plan = ending(None, started=True, going_away=True)
    assert plan.drain and plan.end and plan.reconnect
    assert (plan.code, plan.reason, plan.outcome) == (1001, "server shutting down",
                                                      "shutdown")
    before_start = ending(None, started=False, going_away=True)
    assert not before_start.drain and not before_start.end and before_start.code == 1001


@pytest.mark.parametrize("error, code", [
    (StreamTooLong("too long"), 1008), (IdleTimeout("idle"), 1008),
    (ConfigError("bad"), 1008), (StreamerError("internal error: KeyError"), 1011),
])
def test_an_error_keeps_the_accepted_audio_then_sends_the_error(error, code) -> None:
    plan = ending(error, started=True)
    assert plan.drain and not plan.end and plan.error is error and plan.send_error
    assert (plan.code, plan.reason, plan.outcome) == (code, error.code, error.code)
    assert not ending(error, started=False).drain


def test_a_client_that_does_not_read_gets_nothing_more() -> None:
    plan = ending(SlowClient("not reading"), started=True)
    assert not plan.drain and not plan.end and not plan.send_error
    assert (plan.code, plan.outcome) == (1008, "slow_client")
