"""Helpers shared by the server tests (no tests here): a real server on 127.0.0.1 port 0,
real websockets clients, and checks of the turn invariants.

Timeouts are multiplied by ``STREAMER_TEST_TIMEOUT_FACTOR`` (default 1) for slow CI.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.server import DiarizationServer, ServerSettings
from tests.fakes import fake_frontend, tone_conversation

FACTOR = float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
RATE = 16000


def scaled(seconds: float) -> float:
    return seconds * FACTOR


def run(coroutine: Awaitable[Any], timeout: float = 30.0) -> Any:
    """Run one async test body with a (scaled) overall timeout."""

    async def bounded() -> Any:
        async with asyncio.timeout(scaled(timeout)):
            return await coroutine

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def running_server(frontend: Any = None, **settings: Any
                         ) -> AsyncIterator[DiarizationServer]:
    """A started :class:`DiarizationServer` (fake tone models unless told otherwise)."""
    server = DiarizationServer(frontend if frontend is not None else fake_frontend(),
                               ServerSettings(**settings))
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown()


async def wait_idle(server: DiarizationServer, timeout: float = 5.0) -> int:
    """Wait until the server has no open session; returns how many are left."""
    deadline = time.monotonic() + scaled(timeout)
    while server.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return len(server.sessions)


def url(server: DiarizationServer, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/v1/stream" + (f"?{query}" if query else "")


def pcm(samples: np.ndarray, encoding: str = "pcm_f32le", channels: int = 1) -> bytes:
    """16 kHz mono float samples as wire bytes (channels duplicated)."""
    data = np.repeat(np.asarray(samples, np.float32)[:, None], channels, axis=1).reshape(-1)
    if encoding == "pcm_s16le":
        return (np.clip(data, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    return data.astype("<f4").tobytes()


async def open_stream(server: DiarizationServer, *, query: str = "",
                      headers: dict[str, str] | None = None, **start: Any
                      ) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect, send ``start`` (f32 16 kHz mono unless overridden), return ``ready``."""
    message = {"type": "start", "sample_rate": RATE, "encoding": "pcm_f32le", "channels": 1}
    message.update(start)
    ws = await connect(url(server, query), additional_headers=headers, max_size=None,
                       open_timeout=scaled(10))
    await ws.send(json.dumps(message))
    ready = json.loads(await ws.recv())
    if ready.get("type") != "ready":
        raise AssertionError(f"expected ready, got {ready}")
    return ws, ready


async def send_audio(ws: ClientConnection, audio: np.ndarray, *, chunk: float = 0.1,
                     speed: float | None = None, encoding: str = "pcm_f32le",
                     channels: int = 1, stop: bool = True) -> None:
    """Send ``audio`` in ``chunk``-second frames, paced at ``speed`` x real time (None:
    as fast as possible), then ``stop``."""
    size = max(1, int(chunk * RATE))
    started = time.monotonic()
    for offset in range(0, len(audio), size):
        await ws.send(pcm(audio[offset:offset + size], encoding, channels))
        if speed is not None:
            due = started + (offset + size) / RATE / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    if stop:
        await ws.send(json.dumps({"type": "stop"}))


async def read_all(ws: ClientConnection,
                   on_event: Callable[[dict[str, Any]], None] | None = None
                   ) -> list[dict[str, Any]]:
    """Every event until the server closes the connection."""
    events = []
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            event = json.loads(message)
            events.append(event)
            if on_event is not None:
                on_event(event)
    return events


async def stream(server: DiarizationServer, audio: np.ndarray, *, chunk: float = 0.1,
                 speed: float | None = None, **start: Any
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], int | None]:
    """A whole stream: returns ``ready``, the events after it, and the close code."""
    ws, ready = await open_stream(server, **start)
    sender = asyncio.create_task(send_audio(ws, audio, chunk=chunk, speed=speed,
                                            encoding=start.get("encoding", "pcm_f32le"),
                                            channels=start.get("channels", 1)))
    events = await read_all(ws)
    await sender
    return ready, events, ws.close_code


def finals(events: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    return [(e["speaker"], e["start"], e["end"]) for e in events
            if e["type"] == "turn" and e["final"]]


def check_turn_invariants(events: list[dict[str, Any]]) -> None:
    """Finals in time order, never overlapping, ids increasing, never repeated; interims
    never before the last final."""
    last_end, last_id = 0.0, -1
    for event in events:
        if event["type"] != "turn":
            continue
        if event["start"] < last_end - 1e-6 or event["end"] < event["start"]:
            raise AssertionError(f"turn out of order or overlapping: {event}")
        if event["final"]:
            if event["id"] <= last_id:
                raise AssertionError(f"final turn id {event['id']} after {last_id}")
            last_end, last_id = event["end"], event["id"]


def conversation(pattern: int, seconds: float = 1.5) -> np.ndarray:
    """A tone conversation whose shape depends on ``pattern`` (0, 1, 2, ...)."""
    first, second = (300.0, 700.0) if pattern % 2 == 0 else (700.0, 300.0)
    turns = 2 + pattern % 3
    segments: list[tuple[float | None, float]] = [(None, 0.5 + 0.25 * (pattern % 4))]
    for index in range(turns):
        segments.append((first if index % 2 == 0 else second, seconds + 0.5 * (pattern % 2)))
        segments.append((None, 0.5))
    return tone_conversation(segments)


def expected_finals(audio: np.ndarray, config: dict[str, Any] | None = None
                    ) -> list[tuple[str, float, float]]:
    """Final turns of the engine run directly on ``audio`` (file mode), with fake models."""
    from streamer.config import StreamConfig
    from streamer.engine import diarize_array

    turns, _ = diarize_array(fake_frontend(), audio, StreamConfig.from_dict(config))
    return [(t.speaker, round(t.start, 3), round(t.end, 3)) for t in turns]
