"""The websocket framing layer: its limits and UTF-8 check go through the same path as
the server's own errors (accepted audio is processed first), and a client that sends
but does not read cannot make the server queue without bound."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.fakes import tone_conversation
from tests.test_server_support import (
    BINARY,
    CONT,
    PING,
    TEXT,
    client_frame,
    expected_finals,
    finals,
    handshake,
    open_stream,
    pcm,
    raw_events,
    raw_open,
    read_all,
    rss_bytes,
    run,
    running_server,
    scaled,
    send_audio,
    stream,
    wait_idle,
)

LIMIT = 64_000
#: 12 s of three turns.
SPEECH = tone_conversation([(300.0, 4.0), (None, 0.5), (700.0, 4.0), (None, 0.5),
                            (300.0, 3.0)])
START = json.dumps({"type": "start", "sample_rate": 16000, "encoding": "pcm_f32le"})

# (name, what the client sends after the speech, error code, close code)
BAD_ENDINGS = [
    ("frame over twice the limit", b"\0" * (LIMIT * 5 // 2), "frame_too_large", 1009),
    ("frame of 40 times the limit", b"\0" * (LIMIT * 40), "frame_too_large", 1009),
    ("fragments over the limit", [b"\0" * 40_000, b"\0" * 40_000], "frame_too_large", 1009),
    ("too many fragments", [b"\0\0"] * 1100, "frame_too_large", 1009),
    ("text of invalid UTF-8", ("text", b'{"type": "st\xffop"}'), "bad_json", 1007),
    ("fragmented text cut in a character", ("text", ["{\"a\": \"\u00e9".encode()[:-1], b"x"]),
     "bad_json", 1007),
]


@pytest.mark.parametrize("name,ending,code,close_code", BAD_ENDINGS,
                         ids=[case[0] for case in BAD_ENDINGS])
def test_a_frame_the_framing_layer_refuses_comes_after_the_final_turns(
        name: str, ending, code: str, close_code: int) -> None:
    async def body():
        async with running_server(max_frame_bytes=LIMIT) as server:
            ws, _ = await open_stream(server)
            await send_audio(ws, SPEECH, stop=False)
            if isinstance(ending, tuple):
                await ws.send(ending[1], text=True)
            else:
                await ws.send(ending)
            return await read_all(ws), ws.close_code

    events, got_close = run(body())
    assert finals(events) == expected_finals(SPEECH)
    assert len(finals(events)) == 3
    assert events[-1]["type"] == "error" and events[-1]["code"] == code, events[-1]
    assert got_close == close_code


def test_a_huge_frame_is_refused_at_its_header_and_never_buffered() -> None:
    audio = SPEECH[: 16000 * 5]

    async def body():
        async with running_server(max_frame_bytes=LIMIT, close_timeout=1.0) as server:
            reader, writer = await raw_open(server)
            writer.write(client_frame(1, START.encode()))
            for offset in range(0, len(audio), 8000):
                writer.write(client_frame(BINARY, pcm(audio[offset:offset + 8000])))
            writer.write(client_frame(BINARY, length=1 << 40))  # a terabyte announced
            before = rss_bytes()
            events = asyncio.create_task(raw_events(reader))
            sent = 0
            try:
                while sent < 256 << 20 and not events.done():
                    writer.write(bytes(1 << 20))
                    await writer.drain()
                    sent += 1 << 20
            except ConnectionError:
                pass
            got, close_code = await events
            writer.close()
            return got, close_code, rss_bytes() - before, sent

    events, close_code, grown, sent = run(body())
    assert close_code == 1009 and events[-1]["code"] == "frame_too_large"
    assert "1099511627776 bytes" in events[-1]["message"]
    assert [e for e in events if e["type"] == "ready"]
    assert finals(events) == expected_finals(audio)
    assert grown < 32 << 20, f"server memory grew by {grown >> 20} MiB"


@pytest.mark.parametrize("refused", [
    [client_frame(BINARY, b"\0" * (LIMIT + 4))],
    [client_frame(BINARY, bytes(4), fin=False)] + [client_frame(CONT, bytes(4), fin=False)] * 1100,
    [client_frame(TEXT, b"\xff")],
], ids=["oversized frame", "too many fragments", "invalid UTF-8"])
def test_a_protocol_violation_right_behind_a_refused_message_changes_nothing(
        refused: list[bytes]) -> None:
    """What follows a refused message is not read any more, so a violation of the
    websocket protocol there (here a reserved opcode and a stray continuation, in the
    same write) does not close the connection before the final turns and the error."""
    audio = SPEECH[: 16000 * 5]

    async def body():
        async with running_server(max_frame_bytes=LIMIT, close_timeout=1.0) as server:
            reader, writer = await raw_open(server)
            frames = [client_frame(TEXT, START.encode())]
            frames += [client_frame(BINARY, pcm(audio[o:o + 8000]))
                       for o in range(0, len(audio), 8000)]
            frames += refused + [client_frame(3, b"x"), client_frame(CONT, b"x")]
            writer.write(b"".join(frames))
            events, close_code = await raw_events(reader)
            writer.close()
            return events, close_code

    events, close_code = run(body())
    assert close_code in (1007, 1009) and events[-1]["type"] == "error", (close_code, events[-1])
    assert finals(events) == expected_finals(audio)


@pytest.mark.parametrize("before", [
    [client_frame(TEXT, json.dumps({**json.loads(START), "x": 1}).encode())],
    [client_frame(TEXT, START.encode()), client_frame(BINARY, bytes(4 * 800)),
     client_frame(TEXT, START.encode())],
], ids=["bad start", "second start"])
def test_a_protocol_violation_buffered_behind_a_message_the_session_refuses_changes_nothing(
        before: list[bytes]) -> None:
    """A message the session refuses (not the framing layer), with a violation of the
    websocket protocol (a ping of 126 bytes) behind it in the same write: both are in the
    server's buffer before the session has read the message, yet the error event and its
    close code (1008) are what the client gets, not a 1002."""

    async def body():
        async with running_server(close_timeout=1.0) as server:
            reader, writer = await raw_open(server)
            writer.write(b"".join(before + [client_frame(PING, bytes(126)),
                                            client_frame(TEXT, b'{"type": "stop"}')]))
            events, close_code = await raw_events(reader)
            writer.close()
            return events, close_code

    events, close_code = run(body())
    assert events and events[-1]["type"] == "error", (close_code, events)
    assert events[-1]["code"] == "protocol_error" and close_code == 1008, (close_code, events)


def test_empty_frames_do_not_count_as_activity() -> None:
    async def body():
        async with running_server(idle_timeout=0.5) as server:
            ws, _ = await open_stream(server)
            await ws.send(pcm(SPEECH[:8000]))
            started = time.monotonic()

            async def keep_poking() -> None:
                while True:
                    await ws.send(b"")
                    await asyncio.sleep(0.1)

            poker = asyncio.create_task(keep_poking())
            events = await read_all(ws)
            poker.cancel()
            return events, ws.close_code, time.monotonic() - started

    events, close_code, elapsed = run(body())
    assert close_code == 1008 and events[-1]["code"] == "idle_timeout"
    assert elapsed < scaled(3.0)


def _flood_pings(port: int, seconds: float) -> tuple[bool, int]:
    """Send pings without ever reading, for at most ``seconds``. Returns whether the
    server closed the connection, and how many pings went out."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(handshake())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # no further: the rest of what the server sends stays unread
    assert answer.startswith(b"HTTP/1.1 101"), answer
    sock.sendall(client_frame(1, START.encode()))
    ping = client_frame(PING, b"p" * 125) * 64
    sock.settimeout(0.2)
    deadline, sent = time.monotonic() + seconds, 0
    try:
        while time.monotonic() < deadline:
            try:
                sock.sendall(ping)
                sent += 64
            except socket.timeout:
                continue
    except OSError:  # reset by the server
        return True, sent
    finally:
        sock.close()
    return False, sent


def test_a_ping_flood_from_a_client_that_does_not_read_is_bounded_and_closed() -> None:
    async def body():
        async with running_server(send_timeout=1.0, close_timeout=1.0) as server:
            before = rss_bytes()
            started = time.monotonic()
            closed, pings = await asyncio.to_thread(_flood_pings, server.port, scaled(12.0))
            elapsed = time.monotonic() - started
            grown = rss_bytes() - before
            await wait_idle(server)
            good = await stream(server, SPEECH[: 16000 * 3])
            return closed, pings, elapsed, grown, good, server.metrics.render()

    closed, pings, elapsed, grown, (_, events, code), metrics = run(body(), timeout=40)
    print(f"{pings} pings in {elapsed:.1f} s; server memory grew by {grown >> 20} MiB")
    assert closed, "the server kept answering pings nobody read"
    assert elapsed < scaled(8.0)
    assert grown < 64 << 20
    assert "streamer_slow_clients_total 1" in metrics
    assert 'streamer_errors_total{code="slow_client"} 1' in metrics
    assert code == 1000 and finals(events) == expected_finals(SPEECH[: 16000 * 3])

