"""``streamer serve --processes N``: N worker processes on one port (SO_REUSEPORT).

The end-to-end tests run the real CLI with the embedded preset and two workers: real
speech streams get ``ready``, final turns and ``end`` from both workers, SIGTERM to the
parent flushes every open stream before it exits 0, and a worker killed outright stops
the other one and makes the parent exit 1.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.server import cli, processes
from tests.test_server_cli import _Server
from tests.test_server_support import (
    check_turn_invariants,
    finals,
    read_all,
    run,
    scaled,
    send_audio,
)

TWO_VOICES = Path(__file__).resolve().parent / "data" / "two_voices.wav"
CLIP_SECONDS = 11.0  # alice, then bob
WORKER_INFO = re.compile(r'streamer_worker_info\{worker="(\d+)",pid="(\d+)"\} 1$')


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_process_count_and_per_worker_limits() -> None:
    assert processes.process_count(3) == 3
    assert 1 <= processes.process_count(0) <= processes.MAX_AUTO_PROCESSES
    with pytest.raises(ValueError):
        processes.process_count(-1)
    args = _parse("--processes", "3", "--max-connections", "10")
    share = processes.worker_args(args, 3)
    assert share.max_connections == 4 and share.processes == 1
    assert share.workers >= 2 and args.max_connections == 10
    assert processes.worker_args(_parse("--workers", "5"), 4).workers == 5


def test_bad_process_count_exits_2() -> None:
    assert cli.main(_parse("--processes", "-1")) == 2


def test_port_0_is_reserved_with_so_reuseport() -> None:
    port, holder = processes.reserve_port("127.0.0.1", 0)
    try:
        assert port > 0 and holder is not None
        with socket.socket() as other:  # a worker binds the same port while it is held
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            other.bind(("127.0.0.1", port))
            other.listen()
    finally:
        holder.close()
    assert processes.reserve_port("127.0.0.1", 8123) == (8123, None)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    from streamer.audio import load_audio

    return load_audio(TWO_VOICES)[: int(CLIP_SECONDS * 16000)]


def _start_server() -> tuple[_Server, int]:
    server = _Server([sys.executable, "-m", "streamer", "serve", "--processes", "2",
                      "--host", "127.0.0.1", "--port", "0", "--max-connections", "40"])
    return server, server.port(timeout=90)


async def _open(port: int) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=None,
                       open_timeout=scaled(10))
    await ws.send('{"type":"start","sample_rate":16000,"encoding":"pcm_f32le"}')
    ready = json.loads(await ws.recv())
    if ready.get("type") != "ready":
        raise AssertionError(f"expected ready, got {ready}")
    return ws, ready


async def _whole_stream(port: int, audio: np.ndarray) -> tuple[int, list[dict], int | None]:
    ws, ready = await _open(port)
    sender = asyncio.create_task(send_audio(ws, audio, chunk=0.5))
    events = await read_all(ws)
    await sender
    return ready["models"]["worker"], events, ws.close_code


async def _workers_reached(port: int, tries: int = 24) -> set[int]:
    """Open short streams until both workers have answered (the kernel picks one by a
    hash of the client's address and port)."""
    seen: set[int] = set()
    for _ in range(tries):
        ws, ready = await _open(port)
        seen.add(ready["models"]["worker"])
        await ws.send('{"type":"stop"}')
        await read_all(ws)
        if len(seen) == 2:
            break
    return seen


def _metrics_workers(port: int, requests: int = 24) -> dict[str, int]:
    """Worker index -> pid, from ``streamer_worker_info`` of whichever worker answers."""
    found = {}
    for _ in range(requests):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            match = WORKER_INFO.match(line)
            if match:
                found[match.group(1)] = int(match.group(2))
    return found


@pytest.mark.slow
def test_two_worker_processes_serve_real_speech(speech: np.ndarray) -> None:
    server, port = _start_server()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.status == 200
        assert set(_metrics_workers(port)) == {"0", "1"}

        async def body():
            seen = await _workers_reached(port)
            results = await asyncio.gather(*(_whole_stream(port, speech) for _ in range(6)))
            return seen, results

        seen, results = run(body(), timeout=60)
        assert seen == {0, 1}
        for worker, events, close_code in results:
            assert worker in (0, 1) and close_code == 1000
            check_turn_invariants(events)
            assert finals(events), "no final turn"
            assert events[-1]["type"] == "end"
            assert events[-1]["duration"] == pytest.approx(CLIP_SECONDS, abs=0.01)
    finally:
        assert server.stop() == 0


async def _stream_until_signal(port: int, audio: np.ndarray, started: asyncio.Event,
                               ) -> tuple[int, list[dict], int | None]:
    ws, ready = await _open(port)

    async def send() -> None:
        with contextlib.suppress(ConnectionClosed):
            await send_audio(ws, audio, chunk=0.25, speed=1.0, stop=False)

    sender = asyncio.create_task(send())
    events = await read_all(ws, lambda event: started.set())
    sender.cancel()
    return ready["models"]["worker"], events, ws.close_code


@pytest.mark.slow
def test_sigterm_to_the_parent_flushes_every_stream_and_exits_0(speech) -> None:
    server, port = _start_server()

    async def body():
        events = [asyncio.Event() for _ in range(4)]
        streams = [asyncio.create_task(_stream_until_signal(port, speech, started))
                   for started in events]
        for started in events:  # every stream is under way: turns are coming
            await started.wait()
        code = await asyncio.to_thread(server.stop)
        return code, await asyncio.gather(*streams)

    try:
        exit_code, results = run(body(), timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert exit_code == 0
    for _, events, close_code in results:
        assert events[-1]["type"] == "end" and close_code == 1001
        assert 0 < events[-1]["duration"] < CLIP_SECONDS


def test_a_worker_that_dies_stops_the_others_and_the_parent_exits_1() -> None:
    server, port = _start_server()
    try:
        pids = _metrics_workers(port)
        assert set(pids) == {"0", "1"}
        os.kill(pids["1"], signal.SIGKILL)
        assert server.process.wait(scaled(30)) == 1
        with pytest.raises(OSError):  # worker 0 is gone too
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if server.process.poll() is None:
            server.process.kill()
