"""Bad input gets an error event and the matching close code, while another stream on the
same server goes on unharmed; vanishing, crashing and non-reading clients."""
from __future__ import annotations

import asyncio
import json
import struct
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamer.server.protocol import SlowClient
from streamer.server.sender import EventSender
from tests.fakes import fake_frontend, tone_conversation
from tests.test_server_support import (
    check_turn_invariants,
    conversation,
    expected_finals,
    finals,
    open_stream,
    pcm,
    read_all,
    run,
    running_server,
    scaled,
    send_audio,
    stream,
    url,
    wait_idle,
)

START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le", "channels": 1}


def _start(**changes: Any) -> str:
    message = dict(START)
    message.update(changes)
    return json.dumps({k: v for k, v in message.items() if v is not None})


TONE = pcm(tone_conversation([(300.0, 0.5)]))

# (name, messages the bad client sends, expected error code, expected close code)
BAD_INPUTS = [
    ("binary before start", [b"\x00\x00"], "protocol_error", 1008),
    ("text that is not JSON", ["hello"], "bad_json", 1007),
    ("JSON that is not an object", ["[1, 2]"], "bad_json", 1007),
    ("message without type", ['{"sample_rate": 16000}'], "protocol_error", 1008),
    ("first message not start", ['{"type": "stop"}'], "protocol_error", 1008),
    ("start without sample_rate", [_start(sample_rate=None)], "protocol_error", 1008),
    ("start with unknown field", [_start(language="fr")], "protocol_error", 1008),
    ("sample rate too low", [_start(sample_rate=4000)], "bad_audio", 1007),
    ("sample rate too high", [_start(sample_rate=96000)], "bad_audio", 1007),
    ("sample rate not a number", [_start(sample_rate="16k")], "bad_audio", 1007),
    ("unknown encoding", [_start(encoding="mp3")], "bad_audio", 1007),
    ("encoding not a string", [_start(encoding=["pcm_f32le"])], "bad_audio", 1007),
    ("three channels", [_start(channels=3)], "bad_audio", 1007),
    ("config out of range", [_start(config={"latency": -1})], "bad_config", 1008),
    ("config unknown field", [_start(config={"speed": 2})], "bad_config", 1008),
    ("config not an object", [_start(config=[1])], "bad_config", 1008),
    ("odd byte count", [_start(encoding="pcm_s16le"), b"\x00\x01\x02"], "bad_audio", 1007),
    ("stereo half sample", [_start(channels=2), b"\x00" * 12], "bad_audio", 1007),
    ("NaN sample", [_start(), TONE + struct.pack("<f", float("nan"))], "bad_audio", 1007),
    ("infinite sample", [_start(), struct.pack("<ff", 0.0, float("inf"))], "bad_audio", 1007),
    ("oversize frame", [_start(), b"\x00" * 80_000], "frame_too_large", 1009),
    ("non-JSON after start", [_start(), TONE, "{oops"], "bad_json", 1007),
    ("unknown message type", [_start(), '{"type": "pause"}'], "unknown_message", 1008),
    ("second start", [_start(), _start()], "protocol_error", 1008),
]


async def _bad_client(server, messages: list) -> tuple[list[dict], int | None]:
    async with connect(url(server), max_size=None) as ws:
        for message in messages:
            try:
                await ws.send(message)
            except ConnectionClosed:
                break
        events = await read_all(ws)
        return events, ws.close_code


@pytest.mark.parametrize("name,messages,code,close_code", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_error_and_close_code_others_go_on(name: str, messages: list,
                                                          code: str, close_code: int) -> None:
    good_audio = conversation(2)

    async def body():
        async with running_server(max_frame_bytes=64_000) as server:
            good = asyncio.create_task(stream(server, good_audio, speed=16.0))
            await asyncio.sleep(0.1)
            bad = await _bad_client(server, messages)
            return bad, await good, server.metrics.render()

    (events, got_close), (_, good_events, good_close), metrics = run(body())
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code, events
    assert errors[0]["message"]
    assert events[-1] == errors[0], "the error must be the last event"
    assert got_close == close_code
    assert f'streamer_errors_total{{code="{code}"}} 1' in metrics
    assert good_close == 1000
    assert finals(good_events) == expected_finals(good_audio)


HUGE = "A" * 900_000
ECHOES = [
    ("sample_rate", _start(sample_rate=HUGE), "bad_audio"),
    ("encoding", _start(encoding=HUGE), "bad_audio"),
    ("channels", _start(channels=[HUGE]), "bad_audio"),
    ("unknown field", _start(**{HUGE: 1}), "protocol_error"),
    ("many unknown fields", _start(**{f"f{i}": 1 for i in range(50_000)}), "protocol_error"),
    ("first type", json.dumps({"type": HUGE}), "protocol_error"),
    ("config value", _start(config={"latency": HUGE}), "bad_config"),
    ("config field", _start(config={HUGE: 1}), "bad_config"),
]


@pytest.mark.parametrize("name,message,code", ECHOES, ids=[case[0] for case in ECHOES])
def test_error_messages_quote_only_an_excerpt_of_the_input(name: str, message: str,
                                                           code: str) -> None:
    async def body():
        async with running_server() as server:
            return await _bad_client(server, [message])

    events, _ = run(body())
    assert events[-1]["code"] == code
    assert len(events[-1]["message"]) <= 300, len(events[-1]["message"])


def test_an_unknown_type_after_start_is_quoted_short() -> None:
    async def body():
        async with running_server() as server:
            return await _bad_client(server, [_start(), json.dumps({"type": HUGE})])

    events, _ = run(body())
    assert events[-1]["code"] == "unknown_message" and len(events[-1]["message"]) < 100


def test_accepted_audio_is_processed_before_the_error() -> None:
    audio = tone_conversation([(300.0, 2.0), (None, 0.5), (700.0, 2.0)])

    async def body():
        async with running_server() as server:
            ws, _ = await open_stream(server)
            await send_audio(ws, audio, stop=False)
            await ws.send(b"\x00\x00\x00")
            return await read_all(ws), ws.close_code

    events, close_code = run(body())
    assert close_code == 1007 and events[-1]["code"] == "bad_audio"
    speakers = [speaker for speaker, _, _ in finals(events)]
    assert speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert finals(events)[-1][2] == pytest.approx(4.5, abs=0.05)


@pytest.mark.parametrize("value,rate", [(1e30, 16000), (1e30, 48000), (3e38, 48000)])
def test_out_of_range_float_samples_are_clipped(value: float, rate: int) -> None:
    """50 ms of +-value inside speech: the stream goes on as with the samples at +-1."""
    import soxr

    audio = tone_conversation([(300.0, 2.0), (None, 0.5), (700.0, 2.0), (None, 0.5)])
    wire = audio if rate == 16000 else soxr.resample(audio, 16000, rate)
    burst = slice(rate, rate + rate // 20)
    clipped = wire.copy()
    wire[burst] = value * np.where(np.arange(rate // 20) % 2, 1.0, -1.0)
    clipped[burst] = np.clip(wire[burst], -1.0, 1.0)

    async def body():
        async with running_server() as server:
            return (await stream(server, wire, sample_rate=rate),
                    await stream(server, clipped, sample_rate=rate))

    (_, events, code), (_, clipped_events, _) = run(body())
    assert code == 1000 and events[-1]["type"] == "end"
    assert finals(events) == finals(clipped_events)
    assert [s for s, _, _ in finals(events)] == ["SPEAKER_00", "SPEAKER_01"]


def test_client_vanishing_mid_stream_is_cleaned_up() -> None:
    audio = conversation(3)

    async def body():
        async with running_server() as server:
            ws, _ = await open_stream(server)
            await send_audio(ws, audio[: len(audio) // 2], stop=False)
            await ws.recv()
            ws.transport.abort()
            leftover = await wait_idle(server)
            second = await stream(server, audio)
            await wait_idle(server)
            return leftover, second, server.metrics.render()

    leftover, (_, events, code), metrics = run(body())
    assert leftover == 0
    assert code == 1000 and finals(events) == expected_finals(audio)
    assert "streamer_connections_open 0" in metrics
    assert "internal_error" not in metrics


def _crashing_frontend():
    """Fake models whose streams crash when max_speakers is 7 (a trigger for one client)."""
    frontend = fake_frontend()
    make_stream = frontend.stream

    class Crashing:
        def analyze(self, buffer, start, speakers=None):
            raise RuntimeError("model exploded")

    frontend.stream = lambda config: (Crashing() if config.max_speakers == 7
                                      else make_stream(config))
    return frontend


def test_engine_crash_gives_internal_error_and_others_go_on() -> None:
    audio = conversation(4)

    async def body():
        async with running_server(_crashing_frontend()) as server:
            good = asyncio.create_task(stream(server, audio, speed=8.0))
            crash = await stream(server, audio, config={"max_speakers": 7})
            return crash, await good

    (_, events, code), (_, good_events, good_code) = run(body())
    assert code == 1011 and events[-1]["code"] == "internal_error"
    assert good_code == 1000 and finals(good_events) == expected_finals(audio)


def test_a_client_that_never_reads_does_not_slow_the_others() -> None:
    audios = [conversation(pattern, seconds=1.0) for pattern in range(3)]
    flood = np.tile(conversation(5), 20)

    async def never_reads(server) -> float:
        ws = await connect(url(server), max_queue=2, max_size=None)
        await ws.send(_start())
        started = time.monotonic()
        try:
            while True:
                await send_audio(ws, flood, chunk=0.5, stop=False)
        except ConnectionClosed:
            return time.monotonic() - started

    async def body():
        async with running_server(ping_interval=0.5, ping_timeout=0.5, close_timeout=1.0,
                                  send_timeout=1.0, send_queue_size=16) as server:
            stuck = asyncio.create_task(never_reads(server))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            results = await asyncio.gather(*(stream(server, a, speed=2.0) for a in audios))
            elapsed = time.monotonic() - started
            async with asyncio.timeout(scaled(15)):
                cut_after = await stuck
            return results, elapsed, cut_after

    results, elapsed, cut_after = run(body(), timeout=60)
    for audio, (_, events, code) in zip(audios, results):
        assert code == 1000
        check_turn_invariants(events)
        assert finals(events) == expected_finals(audio)
    longest = max(len(a) for a in audios) / 16000 / 2.0
    print(f"paced streams took {elapsed:.2f} s for {longest:.2f} s; cut after {cut_after:.2f} s")
    assert elapsed < longest + scaled(1.0), f"paced streams took {elapsed:.1f} s"
    assert cut_after < scaled(15)


class _StuckConnection:
    """A connection whose writes never complete (a peer that does not read)."""

    async def send(self, text: str) -> None:
        await asyncio.Event().wait()


def test_event_sender_gives_up_on_a_client_that_does_not_read() -> None:
    async def body():
        sender = EventSender(_StuckConnection(), queue_size=3, timeout=0.2)
        started = time.monotonic()
        with pytest.raises(SlowClient):
            for index in range(100):
                await sender.send({"type": "turn", "id": index})
        waited = time.monotonic() - started
        flushed = await sender.flush(0.1)
        await sender.abort()
        return waited, flushed

    waited, flushed = run(body())
    assert 0.15 < waited < scaled(2.0)
    assert flushed is False
