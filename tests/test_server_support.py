"""Helpers shared by the server tests (no tests here): a real server on 127.0.0.1 port 0,
real websockets clients, and checks of the turn invariants.

Timeouts are multiplied by ``STREAMER_TEST_TIMEOUT_FACTOR`` (default 1) for slow CI.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
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


# -- a websocket client on a bare socket, for what well-behaved clients never send -------

HANDSHAKE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n{extra}\r\n")
TEXT, BINARY, CONT, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9


def handshake(path: str = "/v1/stream", extra: str = "") -> bytes:
    return HANDSHAKE.format(path=path, extra=extra).encode()


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True,
                 length: int | None = None, rsv: int = 0) -> bytes:
    """A client frame, masked with a zero key (so the payload goes as is); ``length``
    overrides the announced payload length."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", size)
    return head + b"\0\0\0\0" + payload


async def raw_open(server: DiarizationServer
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare connection after a successful websocket handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(handshake())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise AssertionError(f"handshake refused: {head!r}")
    return reader, writer


async def raw_events(reader: asyncio.StreamReader) -> tuple[list[dict[str, Any]], int | None]:
    """Text events until the server's close frame (its code) or the end of the stream."""
    events: list[dict[str, Any]] = []
    try:
        while True:
            first, second = await reader.readexactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(size)
            if first & 0x0F == TEXT:
                events.append(json.loads(payload))
            elif first & 0x0F == CLOSE:
                return events, struct.unpack("!H", payload[:2])[0] if payload else None
    except (asyncio.IncompleteReadError, ConnectionError):
        return events, None


def rss_bytes() -> int:
    """Resident memory of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
