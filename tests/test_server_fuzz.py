"""Protocol fuzzing against a real server process on 127.0.0.1 (fake tone models).

Random and malformed messages and frames from a bare socket, from a seeded generator
that goes round a catalogue of kinds (so every kind is tried on every run) with random
contents. Whatever a client sends: no close 1011, no traceback or error in the server's
log, the process stays up, audio accepted before a bad message is still processed (its
final turns arrive before the ``error`` event), and a good client is served afterwards.

A failure names the session's index and kind: ``FUZZ_SEED`` / the index reproduce it.
"""
from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import struct
import sys
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from tests.test_server_cli import _Server
from tests.test_server_support import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    client_frame,
    conversation,
    expected_finals,
    finals,
    handshake,
    pcm,
    raw_events,
    run,
)

SEED = int(os.environ.get("FUZZ_SEED", "8"))
LIMIT = 64_000
FUZZ_SERVER = f"""
import asyncio
from streamer.server import ServerSettings
from streamer.server.cli import configure_logging, serve
from tests.fakes import fake_frontend
configure_logging("INFO")
settings = ServerSettings(max_frame_bytes={LIMIT}, idle_timeout=2.0, close_timeout=1.0,
                          send_timeout=2.0, workers=2)
asyncio.run(serve(fake_frontend(), settings, "127.0.0.1", 0))
"""
CLOSE_CODES = {"bad_json": 1007, "bad_audio": 1007, "protocol_error": 1008,
               "unknown_message": 1008, "bad_config": 1008, "frame_too_large": 1009,
               "stream_too_long": 1008, "idle_timeout": 1008}
START = {"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le", "channels": 1}
NOT_JSON = {"bad_json", "protocol_error", "unknown_message"}
NO_SAMPLES = np.zeros(0, np.float32)


def text(message: Any) -> bytes:
    data = message if isinstance(message, (bytes, str)) else json.dumps(message)
    return client_frame(TEXT, data.encode() if isinstance(data, str) else data)


STOP = text({"type": "stop"})


# -- random contents -------------------------------------------------------------------

def random_text(rng: random.Random, most: int = 24) -> str:
    alphabet = "type start stop {}[]\":,0123456789.-eE \\u00e9\u00e9\u20ac\U0001f600\x00\n\t"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, most)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randint(0, 7 if depth < 3 else 4)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 16000, 48000, 2**63, -(2**70), 7])
    if choice == 3:
        return rng.choice([0.0, -0.5, 1e308, 1e-320, 0.05, 60.0, 3.5])
    if choice == 4:
        return random_text(rng)
    if choice == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["type", "sample_rate", "encoding", "channels", "config", "step", "duration",
            "latency", "max_speakers", random_text(rng, 6)]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_bytes(rng: random.Random, most: int = 48) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, most)))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


# -- the catalogue ---------------------------------------------------------------------
# A kind makes (frames, error codes it may end the stream with, samples it adds). After a
# valid start, an error kind ends the stream with one of its codes; a harmless one (codes
# None) lets it go on to `end`.

Kind = Callable[[random.Random], tuple[list[bytes], "set[str] | None", np.ndarray]]


def _error(codes: set[str], make: Callable[[random.Random], list[bytes]]) -> Kind:
    return lambda rng: (make(rng), codes, NO_SAMPLES)


def _bad_utf8_fragments(rng: random.Random) -> list[bytes]:
    tail = random_bytes(rng, 6)
    while _is_utf8(b'{"type": "' + tail):
        tail = random_bytes(rng, 6)
    return [client_frame(TEXT, b'{"type": "', fin=False), client_frame(CONT, tail)]


def _random_object(rng: random.Random) -> list[bytes]:
    message = random_json(rng, 1)
    if isinstance(message, dict) and message.get("type") in ("start", "stop"):
        message["type"] = "pause"
    return [text(message)]


ERRORS: dict[str, Kind] = {
    "random bytes as text": _error(NOT_JSON, lambda rng: [client_frame(TEXT, random_bytes(rng))]),
    "random text": _error(NOT_JSON, lambda rng: [text(random_text(rng))]),
    "random JSON": _error(NOT_JSON, _random_object),
    "empty text": _error({"bad_json"}, lambda rng: [text("")]),
    "deep JSON": _error({"bad_json"}, lambda rng: [text("[" * 5000 + "]" * 5000)]),
    "unknown type": _error({"unknown_message"},
                           lambda rng: [text({"type": "x" + random_text(rng)})]),
    "second start": _error({"protocol_error"},
                           lambda rng: [text({**START, "config": random_json(rng)})]),
    "partial samples": _error({"bad_audio"}, lambda rng: [
        client_frame(BINARY, bytes(4 * rng.randint(0, 99) + rng.randint(1, 3)))]),
    "non-finite samples": _error({"bad_audio"}, lambda rng: [client_frame(BINARY, struct.pack(
        "<3f", 0.1, rng.choice([float("nan"), float("inf"), -float("inf")]), 0.2))]),
    "oversized frame": _error({"frame_too_large"}, lambda rng: [
        client_frame(BINARY, bytes(rng.choice([LIMIT + 4, LIMIT * 5 // 2, LIMIT * 40])))]),
    "oversized text": _error({"frame_too_large"}, lambda rng: [text("x" * (LIMIT + 1))]),
    "huge frame announced": _error({"frame_too_large"}, lambda rng: [client_frame(
        rng.choice([BINARY, TEXT]), bytes(1000), length=rng.choice([1 << 20, 1 << 40]))]),
    "fragments over the limit": _error({"frame_too_large"}, lambda rng: [
        client_frame(BINARY, bytes(40_000), fin=False), client_frame(CONT, bytes(40_000))]),
    "too many fragments": _error({"frame_too_large"}, lambda rng: [
        client_frame(BINARY, bytes(4), fin=False),
        *[client_frame(CONT, bytes(4), fin=False)] * 1100]),
    "fragmented text, bad UTF-8": _error({"bad_json"}, _bad_utf8_fragments),
}
HARMLESS: dict[str, Kind] = {
    "ping": lambda rng: ([client_frame(PING, random_bytes(rng, 125))], None, NO_SAMPLES),
    "pong": lambda rng: ([client_frame(0xA, random_bytes(rng, 125))], None, NO_SAMPLES),
    "empty audio": lambda rng: ([client_frame(BINARY, b"")], None, NO_SAMPLES),
    "huge samples": lambda rng: (
        [client_frame(BINARY, struct.pack("<4f", 1e30, -1e30, 3e38, -0.5))], None,
        np.array([1.0, -1.0, 1.0, -0.5], np.float32)),
    "fragmented audio around a ping": lambda rng: (
        [client_frame(BINARY, bytes(400), fin=False), client_frame(PING, b"x"),
         client_frame(CONT, bytes(400))], None, np.zeros(200, np.float32)),
}
# Violations of the websocket protocol itself: closed at once (1002), no promise made.
VIOLATIONS: dict[str, Callable[[random.Random], list[bytes]]] = {
    "reserved opcode": lambda rng: [client_frame(rng.randint(3, 7), b"x")],
    "reserved bits": lambda rng: [client_frame(BINARY, bytes(4), rsv=rng.randint(1, 7))],
    "stray continuation": lambda rng: [client_frame(CONT, bytes(4))],
    "fragmented ping": lambda rng: [client_frame(PING, b"x", fin=False)],
    "long ping": lambda rng: [client_frame(PING, bytes(126))],
    "unmasked frame": lambda rng: [bytes([0x82, 0x04]) + bytes(4)],
    "interleaved messages": lambda rng: [client_frame(BINARY, bytes(8), fin=False),
                                         client_frame(BINARY, bytes(8))],
    "raw bytes": lambda rng: [random_bytes(rng, 64)],
    "odd close": lambda rng: [client_frame(CLOSE, rng.choice(
        [b"\x03\xe8\xff\xfe", b"\x00\x01", b"\x0b\xb8x", b"\x03", random_bytes(rng, 20)]))],
    "random start": lambda rng: [text({**START, **{k: random_json(rng) for k in rng.sample(
        ["sample_rate", "encoding", "channels", "config", "type", "x"], rng.randint(1, 3))}})],
}


@functools.lru_cache(maxsize=None)
def clip(pattern: int, seconds: float) -> np.ndarray:
    return conversation(pattern)[: int(seconds * 16000)]


@functools.lru_cache(maxsize=None)
def clip_finals(pattern: int, seconds: float) -> tuple:
    return tuple(expected_finals(clip(pattern, seconds)))


def audio_frames(audio: np.ndarray, sizes: list[int]) -> Iterator[bytes]:
    offset, index = 0, 0
    while offset < len(audio):
        size = sizes[index % len(sizes)]
        yield client_frame(BINARY, pcm(audio[offset:offset + size]))
        offset, index = offset + size, index + 1


# -- one session -----------------------------------------------------------------------

async def _session(port: int, frames: list[bytes]) -> tuple[list[dict[str, Any]], int | None]:
    """Send ``frames`` (as far as the server lets), return the events and close code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(handshake())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        events = asyncio.create_task(raw_events(reader))
        try:
            for frame in frames:
                if events.done():
                    break
                writer.write(frame)
                await writer.drain()
        except ConnectionError:
            pass
        got, code = await events
        try:
            writer.write(client_frame(CLOSE, struct.pack("!H", code or 1000)))
            await writer.drain()
        except ConnectionError:
            pass
        return got, code
    finally:
        writer.close()


def session(port: int, frames: list[bytes]) -> tuple[list[dict[str, Any]], int | None]:
    return run(_session(port, frames), timeout=20)


def check_error_ending(events: list[dict[str, Any]], code: int | None,
                       allowed: set[str]) -> None:
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and events[-1] is errors[0], events[-3:]
    assert errors[0]["code"] in allowed, errors[0]
    assert code == CLOSE_CODES[errors[0]["code"]], (code, errors[0])
    assert len(errors[0]["message"]) <= 300


# -- the test --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[tuple[_Server, int]]:
    process = _Server([sys.executable, "-c", FUZZ_SERVER])
    port = process.port(timeout=60)
    yield process, port
    if process.process.poll() is None:
        process.process.kill()


def _after_a_valid_start(port: int, rng: random.Random, name: str, kind: Kind) -> None:
    """Start, some audio, one bad (or harmless) thing, maybe stop: the accepted audio's
    final turns always arrive, then the error (or the end)."""
    pattern, seconds = rng.randint(0, 3), rng.choice([0.0, 0.7, 2.3, 4.1])
    sizes = [rng.randint(1, 9000) for _ in range(rng.randint(1, 3))]
    bad, allowed, extra = kind(rng)
    audio = clip(pattern, seconds)
    frames = [text(START), *audio_frames(audio, sizes), *bad]
    if allowed is None or rng.random() < 0.5:
        frames.append(STOP)
    events, code = session(port, frames)
    assert code != 1011 and events and events[0]["type"] == "ready", (code, events[:1])
    expected = (clip_finals(pattern, seconds) if not len(extra) else
                tuple(expected_finals(np.concatenate([audio, extra]))))
    assert tuple(finals(events)) == expected, "accepted audio lost"
    if allowed is None:
        assert code == 1000 and events[-1]["type"] == "end", (code, events[-1])
    else:
        check_error_ending(events, code, allowed)


def _frames(name: str, rng: random.Random) -> list[bytes]:
    if name in VIOLATIONS:
        return VIOLATIONS[name](rng)
    return {**ERRORS, **HARMLESS}[name](rng)[0]


def _anything(port: int, rng: random.Random, names: list[str]) -> None:
    """One to four things of any kind, then stop: never an internal error, and an error
    event is the last event, with its close code."""
    frames = [frame for name in names for frame in _frames(name, rng)] + [STOP]
    events, code = session(port, frames)
    assert code != 1011, events[-1:]
    assert not [e for e in events if e.get("code") == "internal_error"]
    if [e for e in events if e["type"] == "error"]:
        check_error_ending(events, code, set(CLOSE_CODES))


def test_protocol_fuzz(server: tuple[_Server, int]) -> None:
    process, port = server
    rng = random.Random(SEED)
    kinds = list({**ERRORS, **HARMLESS}.items())
    every = list(ERRORS) + list(HARMLESS) + list(VIOLATIONS)
    for index in range(3 * len(kinds)):
        name, kind = kinds[index % len(kinds)]
        try:
            _after_a_valid_start(port, rng, name, kind)
        except AssertionError as error:
            raise AssertionError(f"session {index} ({name}, seed {SEED}): {error}") from None
    for index in range(80):
        names = rng.sample(every, rng.randint(1, 4)) if index else ["random start"]
        try:
            _anything(port, rng, names)
        except AssertionError as error:
            raise AssertionError(f"mixed session {index} ({names}, seed {SEED}): {error}"
                                 ) from None

    assert process.process.poll() is None, "the server process died"
    good = clip(1, 4.1)
    events, code = session(port, [text(START), *audio_frames(good, [4000]), STOP])
    assert code == 1000 and tuple(finals(events)) == clip_finals(1, 4.1)
    assert process.stop() == 0
    log = list(process.log)
    while not process.lines.empty():
        log.append(process.lines.get_nowait())
    text_log = "".join(log)
    assert "closed: stop" in text_log  # the log was read
    assert "Traceback" not in text_log and " ERROR " not in text_log, text_log[-3000:]
