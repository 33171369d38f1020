"""``streamer serve --processes N``: N worker processes on one port (SO_REUSEPORT).

The end-to-end tests run the real CLI with the embedded preset and two workers: real
speech streams get ``ready``, final turns and ``end`` from both workers, SIGTERM to the
parent flushes every open stream before it exits 0 (also when the signal comes twice at
once, as timeout(1) sends it), a worker killed outright is replaced while the other one's
streams go on, and workers that cannot start make the parent give up instead of
restarting them forever.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import sys
import time
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
RESTARTS = re.compile(r'streamer_worker_restarts_total\{worker="(\d+)"\} (\d+)$')


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


def test_workers_share_one_state_secret_when_none_is_configured(monkeypatch) -> None:
    """A state sealed by one worker must resume on another: without a secret or a token,
    the parent gives its workers one random secret (each would make its own)."""
    from streamer.server.state import StateSealer

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    monkeypatch.delenv("STREAMER_STATE_SECRET", raising=False)
    monkeypatch.delenv("STREAMER_TOKEN", raising=False)
    processes.share_state_secret(parser.parse_args([]))
    secret = os.environ["STREAMER_STATE_SECRET"]
    assert len(secret) == 64
    sealed = StateSealer(secret).seal({"version": 1})
    assert StateSealer(os.environ["STREAMER_STATE_SECRET"]).open(sealed) == {"version": 1}
    processes.share_state_secret(parser.parse_args([]))  # kept: already shared
    assert os.environ["STREAMER_STATE_SECRET"] == secret
    # With a token, the workers derive the same key from it (and it survives restarts).
    monkeypatch.delenv("STREAMER_STATE_SECRET")
    processes.share_state_secret(parser.parse_args(["--token", "t"]))
    assert "STREAMER_STATE_SECRET" not in os.environ


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
    return {index: pid for index, (pid, _) in _scrape(port, requests).items()}


def _scrape(port: int, requests: int = 24) -> dict[str, tuple[int, int]]:
    """Worker index -> (pid, ``streamer_worker_restarts_total``) of the workers that
    answered ``requests`` scrapes of ``/metrics``."""
    found = {}
    for _ in range(requests):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        pid = restarts = None
        for line in text.splitlines():
            info, count = WORKER_INFO.match(line), RESTARTS.match(line)
            if info:
                index, pid = info.group(1), int(info.group(2))
            if count:
                restarts = int(count.group(2))
        if pid is not None:
            found[index] = (pid, restarts)
    return found


def _rest_of_log(server: _Server, quiet: float = 1.0) -> str:
    """Every log line of ``server`` so far, once none came for ``quiet`` seconds."""
    while True:
        try:
            server.log.append(server.lines.get(timeout=quiet))
        except queue.Empty:
            return "".join(server.log)


def test_restart_policy_doubles_the_pause_and_checks_its_values() -> None:
    policy = processes.RestartPolicy(first_delay=0.5)
    assert [policy.delay(crashes) for crashes in (1, 2, 3)] == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError):
        processes.RestartPolicy(crash_limit=0)
    with pytest.raises(ValueError):
        processes.RestartPolicy(first_delay=float("nan"))


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


def _signalled_supervisor(*signals: tuple[int, float]) -> list[int]:
    """The signals a parent sends its workers after receiving ``signals`` (number,
    time received) while serving."""
    supervisor = processes.Supervisor(_parse(), 2, 0, None)
    sent: list[int] = []
    supervisor._send = sent.append
    supervisor.signals = list(signals)
    supervisor._forward_signals()
    return sent


def test_a_sigterm_repeated_at_once_is_the_same_stop_request() -> None:
    term, interrupt, kill = signal.SIGTERM, signal.SIGINT, signal.SIGKILL
    window = processes.REPEAT_WINDOW
    # timeout(1) and systemd signal the parent, then its whole process group
    assert _signalled_supervisor((term, 100.0), (term, 100.0 + window / 4)) == [term]
    assert _signalled_supervisor((interrupt, 100.0), (term, 100.0 + window / 4)) == [term]
    # a second request a moment later, or a second Ctrl-C, still means "kill now"
    assert _signalled_supervisor((term, 100.0), (term, 100.0 + window * 1.5)) == [term, kill]
    assert _signalled_supervisor((term, 100.0), (interrupt, 100.0 + window / 4)) == [term, kill]
    assert _signalled_supervisor((interrupt, 100.0), (interrupt, 100.2)) == [term, kill]


@pytest.mark.slow
def test_sigterm_to_the_parent_and_its_group_still_flushes_every_stream(speech) -> None:
    server, port = _start_server()
    workers = _metrics_workers(port)

    async def body():
        events = [asyncio.Event() for _ in range(4)]
        streams = [asyncio.create_task(_stream_until_signal(port, speech, started))
                   for started in events]
        for started in events:
            await started.wait()
        # what timeout(1) does: SIGTERM to its child, then to the child's process group
        server.process.send_signal(signal.SIGTERM)
        for pid in workers.values():
            os.kill(pid, signal.SIGTERM)
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, scaled(30))
        return code, await asyncio.gather(*streams)

    try:
        assert set(workers) == {"0", "1"}
        exit_code, results = run(body(), timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = _rest_of_log(server, quiet=0.2)
    assert exit_code == 0, log
    for _, events, close_code in results:
        assert events[-1]["type"] == "end" and close_code == 1001, log
        assert 0 < events[-1]["duration"] < CLIP_SECONDS
    assert "killing" not in log


async def _one_stream_per_worker(port: int, tries: int = 24) -> dict[int, ClientConnection]:
    """An open (started) stream on each of the two workers; extra ones are stopped."""
    streams: dict[int, ClientConnection] = {}
    for _ in range(tries):
        ws, ready = await _open(port)
        worker = ready["models"]["worker"]
        if worker in streams:
            await ws.send('{"type":"stop"}')
            await read_all(ws)
        else:
            streams[worker] = ws
        if len(streams) == 2:
            break
    return streams


async def _send_until_closed(ws: ClientConnection, audio: np.ndarray, stop: bool) -> None:
    with contextlib.suppress(ConnectionClosed):
        await send_audio(ws, audio, chunk=0.25, speed=1.0, stop=stop)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_other_streams_go_on(speech) -> None:
    server, port = _start_server()
    try:
        pids = _metrics_workers(port)
        assert set(pids) == {"0", "1"}

        async def body():
            streams = await _one_stream_per_worker(port)
            assert set(streams) == {0, 1}
            started = {worker: asyncio.Event() for worker in streams}
            readers = {worker: asyncio.create_task(read_all(
                ws, lambda event, worker=worker: started[worker].set()))
                for worker, ws in streams.items()}
            senders = [asyncio.create_task(_send_until_closed(streams[0], speech, True)),
                       asyncio.create_task(_send_until_closed(streams[1], speech, False))]
            for event in started.values():  # both streams are under way
                await event.wait()
            os.kill(pids["1"], signal.SIGKILL)
            await readers[1]
            senders[1].cancel()
            events = await readers[0]
            await senders[0]
            return events, streams[0].close_code, streams[1].close_code

        events, survivor_code, victim_code = run(body(), timeout=60)
        assert victim_code == 1006  # cut off: the process is gone
        assert survivor_code == 1000, "the other worker's stream was ended"
        check_turn_invariants(events)
        assert finals(events), "no final turn"
        assert events[-1]["type"] == "end"
        assert events[-1]["duration"] == pytest.approx(CLIP_SECONDS, abs=0.01)

        deadline = time.monotonic() + scaled(90)
        while (workers := _scrape(port)).get("1", (pids["1"],))[0] == pids["1"]:
            assert time.monotonic() < deadline, "worker 1 was not replaced"
            time.sleep(0.5)
        assert server.process.poll() is None, "the parent exited"
        assert workers["1"][1] == 1 and workers["0"] == (pids["0"], 0)
        assert run(_workers_reached(port), timeout=60) == {0, 1}
        assert "restarting it in" in _rest_of_log(server, quiet=0.2)
    finally:
        assert server.stop() == 0


def test_workers_that_cannot_start_make_the_parent_give_up(tmp_path: Path) -> None:
    checkpoint = tmp_path / "segmentation.bin"
    checkpoint.write_text("not a checkpoint")
    server = _Server([sys.executable, "-m", "streamer", "serve", "--processes", "2",
                      "--host", "127.0.0.1", "--port", "0",
                      "--segmentation", str(checkpoint)])
    try:
        code = server.process.wait(scaled(150))
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = _rest_of_log(server)
    assert code == 1
    limit = processes.RestartPolicy().crash_limit
    assert log.count("cannot load the models") >= limit, log
    assert "restarted worker" in log
    assert re.search(rf"{limit} times in a row: giving up", log), log
    assert "streamer serving on" not in log
