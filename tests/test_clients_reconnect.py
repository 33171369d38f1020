"""The shipped clients through a drain: two servers listen on one port (as two replicas
behind a balancer) and share a real redis-server; the one serving the stream is drained
mid-stream, and the file and microphone clients resume on the other by ``resume_id``,
sending again what it had not processed: their final turns are the uncut stream's."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

import clients.mic as mic
from clients.common import final_turns
from clients.file import FileAudio, stream_audio
from streamer.server.app import DiarizationServer
from streamer.server.settings import ServerSettings
from tests.fakes import fake_frontend
from tests.services import redis_server
from tests.test_clients_mic import FakeInputStream
from tests.test_server_resume import LONG_TALK

SPEED = 4.0  # x real time: the drain comes while the audio is still being sent


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as address:
        yield address


async def replicas(redis_url: str | None) -> list[DiarizationServer]:
    settings = ServerSettings(redis_url=redis_url, state_secret="one secret")
    first = DiarizationServer(fake_frontend(), settings)
    await first.start("127.0.0.1", 0, reuse_port=True)
    second = DiarizationServer(fake_frontend(), settings)
    await second.start("127.0.0.1", first.port, reuse_port=True)
    return [first, second]


async def drain_the_busy_one(servers: list[DiarizationServer], after: float) -> float:
    """Wait until a server holds the stream, ``after`` more seconds, then drain it."""
    deadline = time.monotonic() + 30
    while not any(server.sessions for server in servers):
        assert time.monotonic() < deadline, "the stream never opened"
        await asyncio.sleep(0.02)
    await asyncio.sleep(after)
    busy = next(server for server in servers if server.sessions)
    await busy.shutdown()
    return time.monotonic()


def labels(turns: list[dict[str, Any]], end: float) -> list[str]:
    grid = np.arange(0, end, 0.01)
    out = [""] * len(grid)
    for turn in turns:
        for index in np.flatnonzero((grid >= turn["start"]) & (grid < turn["end"])):
            out[index] = turn["speaker"]
    return out


def check_against_uncut(events: list[dict[str, Any]], uncut: list[dict[str, Any]]) -> None:
    ends = [e for e in events if e["type"] == "end"]
    readies = [e for e in events if e["type"] == "ready"]
    assert len(ends) == len(readies) == 2 and ends[0].get("reconnect") is True
    assert readies[1]["resume_id"] == readies[0]["resume_id"]
    assert readies[1]["offset"] == pytest.approx(ends[0]["position"])
    assert_uncut_labels(events, uncut)


def assert_uncut_labels(events: list[dict[str, Any]], uncut: list[dict[str, Any]]) -> None:
    """The stream ended where the audio does, with the uncut stream's labels."""
    ends = [e for e in events if e["type"] == "end"]
    assert ends[-1]["position"] == pytest.approx(len(LONG_TALK) / 16000, abs=0.01)
    duration = len(LONG_TALK) / 16000
    truth, guess = labels(final_turns(uncut), duration), labels(final_turns(events), duration)
    speech = [i for i, label in enumerate(truth) if label]
    assert sum(truth[i] == guess[i] for i in speech) / len(speech) > 0.99


def test_the_file_client_resumes_on_the_other_replica(redis_url) -> None:
    audio = FileAudio((LONG_TALK * 32767).astype(np.int16)[:, None], 16000)

    async def body():
        servers = await replicas(redis_url)
        try:
            url = f"ws://127.0.0.1:{servers[0].port}/v1/stream"
            client = asyncio.create_task(stream_audio(url, audio, speed=SPEED))
            await drain_the_busy_one(servers, 1.5)
            events = await client
            uncut = await stream_audio(url, audio, speed=0)
            return events, uncut
        finally:
            for server in servers:
                await server.shutdown()

    events, uncut = asyncio.run(asyncio.wait_for(body(), 60))
    check_against_uncut(events, uncut)


def test_the_microphone_client_resumes_without_losing_what_it_captured(redis_url) -> None:
    pcm = (LONG_TALK * 32767).astype(np.int16)

    async def body():
        servers = await replicas(redis_url)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        opened: list[FakeInputStream] = []

        def factory(**kwargs: Any) -> FakeInputStream:
            opened.append(FakeInputStream(pcm, lambda: loop.call_soon_threadsafe(stop.set),
                                          speed=SPEED, **kwargs))
            return opened[-1]

        try:
            url = f"ws://127.0.0.1:{servers[0].port}/v1/stream"
            client = asyncio.create_task(mic.stream_microphone(
                url, 16000, stop_event=stop, stream_factory=factory))
            await drain_the_busy_one(servers, 1.5)
            events = await client
            uncut = await stream_audio(url, FileAudio(pcm[:, None], 16000), speed=0)
            return events, uncut, len(opened)
        finally:
            for server in servers:
                await server.shutdown()

    events, uncut, microphones = asyncio.run(asyncio.wait_for(body(), 60))
    assert microphones == 1  # capture went on through the reconnect
    check_against_uncut(events, uncut)


def test_without_a_shared_store_the_client_resumes_with_the_state_it_holds() -> None:
    """No Redis: the other server has no saved state for the id (``bad_state``), so the
    client resumes with the ``state`` and ``position`` of its ``end`` (the servers share
    their state secret), and sends the audio before that position again as
    ``start.context``: its final turns are the uncut stream's, nothing is lost."""
    audio = FileAudio((LONG_TALK * 32767).astype(np.int16)[:, None], 16000)
    seen: list[dict[str, Any]] = []

    async def body():
        servers = await replicas(None)
        try:
            url = f"ws://127.0.0.1:{servers[0].port}/v1/stream"
            client = asyncio.create_task(stream_audio(url, audio, speed=SPEED,
                                                      on_event=seen.append))
            await drain_the_busy_one(servers, 1.5)
            events = await client
            uncut = await stream_audio(url, audio, speed=0)
            return events, uncut
        finally:
            for server in servers:
                await server.shutdown()

    events, uncut = asyncio.run(asyncio.wait_for(body(), 60))
    assert any(e.get("code") == "bad_state" for e in seen)  # the id was tried first
    readies = [e for e in events if e["type"] == "ready"]
    ends = [e for e in events if e["type"] == "end"]
    assert len(readies) == len(ends) == 2 and ends[0]["reconnect"] is True
    assert readies[1]["resumed"] == [s["label"] for s in ends[0]["speakers"]]
    assert readies[1]["offset"] == pytest.approx(ends[0]["position"])
    assert readies[1]["context"] == pytest.approx(min(15.0, ends[0]["position"]))
    assert_uncut_labels(events, uncut)


def test_after_a_lost_connection_the_file_client_resumes_by_id() -> None:
    """The network drops the stream's connection mid-stream (the server's transport is
    aborted: no close handshake on either side). The server saves the stream as it was
    when it noticed; the client reopens it by ``resume_id``, gets the final turns the
    server could not send (``replayed``), sends its audio on from ``ready.offset``, and
    its final turns are the uncut stream's."""
    audio = FileAudio((LONG_TALK * 32767).astype(np.int16)[:, None], 16000)

    async def body():
        server = DiarizationServer(fake_frontend(), ServerSettings())
        await server.start("127.0.0.1", 0)
        try:
            url = f"ws://127.0.0.1:{server.port}/v1/stream"
            client = asyncio.create_task(stream_audio(url, audio, speed=SPEED))
            deadline = time.monotonic() + 30
            while not server.sessions:
                assert time.monotonic() < deadline, "the stream never opened"
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.5)
            next(iter(server.sessions)).connection.transport.abort()
            events = await client
            uncut = await stream_audio(url, audio, speed=0)
            return events, uncut
        finally:
            await server.shutdown()

    events, uncut = asyncio.run(asyncio.wait_for(body(), 60))
    readies = [e for e in events if e["type"] == "ready"]
    ends = [e for e in events if e["type"] == "end"]
    assert len(readies) == 2 and len(ends) == 1
    assert readies[1]["resume_id"] == readies[0]["resume_id"] and readies[1]["offset"] > 0
    assert readies[1]["context"] == pytest.approx(min(15.0, readies[1]["offset"]))
    assert any(e.get("replayed") for e in events)
    assert_uncut_labels(events, uncut)
