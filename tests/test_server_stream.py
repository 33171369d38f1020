"""Streams through a real server on 127.0.0.1 with real websockets clients (fake models)."""
from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest

from tests.fakes import tone_conversation
from tests.test_server_support import (
    check_turn_invariants,
    conversation,
    expected_finals,
    finals,
    open_stream,
    read_all,
    run,
    running_server,
    scaled,
    send_audio,
    stream,
)


def test_one_stream_gives_ready_turns_and_end() -> None:
    audio = conversation(0)

    async def body():
        async with running_server() as server:
            return await stream(server, audio)

    ready, events, code = run(body())
    assert ready["session"] and ready["models"]["preset"] == "fake"
    assert ready["config"]["latency"] >= ready["config"]["step"]
    assert ready["limits"]["max_frame_bytes"] > 0
    assert code == 1000
    assert events[-1]["type"] == "end"
    assert events[-1]["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert {s["label"] for s in events[-1]["speakers"]} == {"SPEAKER_00", "SPEAKER_01"}
    assert all(len(s["embedding"]) == 8 for s in events[-1]["speakers"])
    check_turn_invariants(events)
    assert finals(events) == expected_finals(audio)
    assert any(e["type"] == "turn" and not e["final"] for e in events), "no interim turn"


@pytest.mark.parametrize("encoding,channels,rate", [("pcm_s16le", 2, 48000),
                                                    ("pcm_f32le", 1, 8000)])
def test_other_rates_encodings_and_channels(encoding: str, channels: int, rate: int) -> None:
    base = tone_conversation([(None, 0.5), (300.0, 2.0), (None, 0.5), (700.0, 2.0)], sr=rate)

    async def body():
        async with running_server() as server:
            ws, ready = await open_stream(server, sample_rate=rate, encoding=encoding,
                                          channels=channels)
            data = np.repeat(base[:, None], channels, axis=1).reshape(-1)
            frame = (data * 32767).astype("<i2").tobytes() if encoding == "pcm_s16le" \
                else data.astype("<f4").tobytes()
            step = 4096 * channels * (2 if encoding == "pcm_s16le" else 4)
            for offset in range(0, len(frame), step):
                await ws.send(frame[offset:offset + step])
            await ws.send('{"type":"stop"}')
            return ready, await read_all(ws), ws.close_code

    ready, events, code = run(body())
    assert (ready["sample_rate"], ready["encoding"], ready["channels"]) == (rate, encoding,
                                                                           channels)
    assert code == 1000
    assert [speaker for speaker, _, _ in finals(events)] == ["SPEAKER_00", "SPEAKER_01"]
    assert events[-1]["duration"] == pytest.approx(5.0, abs=0.05)


def test_twenty_concurrent_clients_each_get_their_own_timeline() -> None:
    audios = [conversation(pattern) for pattern in range(20)]

    async def body():
        # A burst of 20 handshakes on a fresh server passes admission's cold start only
        # with more CPUs than CI has (test_server_admission covers it): admission off.
        async with running_server(max_load=0, max_lag=0) as server:
            return await asyncio.gather(*(stream(server, audio, speed=4.0)
                                          for audio in audios))

    results = run(body(), timeout=60)
    for audio, (ready, events, code) in zip(audios, results):
        assert code == 1000
        check_turn_invariants(events)
        got = finals(events)
        assert got == expected_finals(audio)
        assert got[0][1] < 2.0, "a stream's timeline does not start at 0"
        assert events[-1]["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert len({ready["session"] for ready, _, _ in results}) == 20


def test_fast_sender_is_processed_completely() -> None:
    audio = np.tile(conversation(1), 4)

    async def body():
        async with running_server(max_pending_seconds=2.0, max_feed_seconds=1.0) as server:
            result = await stream(server, audio, chunk=0.5)
            return result, server.metrics.render()

    (ready, events, code), metrics = run(body())
    assert code == 1000
    assert events[-1]["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert finals(events) == expected_finals(audio)
    assert not any(e["type"] == "warning" for e in events), "a fast sender is not behind"
    # The fast sender was paused (the metric is written, and above 0).
    assert re.search(r"^streamer_backpressure_pauses_total [1-9]", metrics, re.M), metrics


def test_interim_turn_comes_within_a_second_of_speech() -> None:
    audio = tone_conversation([(300.0, 3.0)])

    async def body():
        async with running_server() as server:
            ws, _ = await open_stream(server)
            first_interim = asyncio.get_running_loop().create_future()

            def seen(event):
                if event["type"] == "turn" and not first_interim.done():
                    first_interim.set_result(time.monotonic())

            started = time.monotonic()
            reader = asyncio.create_task(read_all(ws, seen))
            await send_audio(ws, audio, chunk=0.05, speed=1.0)
            await reader
            return first_interim.result() - started

    delay = run(body())
    assert delay < 1.0 + scaled(0.3), f"first interim turn after {delay:.2f} s"
