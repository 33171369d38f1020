"""Single-use session tokens: POST /v1/sessions with the server token gives a short-lived
stream URL that opens one websocket, through a real server."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer.server.tokens import SessionTokens
from tests.fakes import tone_conversation
from tests.test_server_support import read_all, run, running_server, scaled, send_audio

TOKEN = "server-secret-token"


def post(port: int, path: str = "/v1/sessions", token: str | None = TOKEN,
         method: str = "POST", headers: dict | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=b"" if method == "POST" else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            body = reply.read().decode()
            return reply.status, json.loads(body)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def handshake(url: str) -> tuple[int, dict | None]:
    """Open the stream at ``url``: (101, ready) or (HTTP status, None)."""
    try:
        ws = await connect(url, open_timeout=scaled(10))
    except InvalidStatus as refused:
        return refused.response.status_code, None
    await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                              "encoding": "pcm_f32le"}))
    ready = json.loads(await ws.recv())
    await send_audio(ws, tone_conversation([(300.0, 1.0)]))
    events = await read_all(ws)
    return 101, {"ready": ready, "events": events}


def test_a_session_url_opens_exactly_one_stream() -> None:
    async def body():
        async with running_server(token=TOKEN) as server:
            status, issued = await asyncio.to_thread(post, server.port)
            first = await handshake(issued["url"])
            again = await handshake(issued["url"])
            other_status, other = await asyncio.to_thread(post, server.port)
            return status, issued, first, again, other, server.port, server.metrics

    status, issued, first, again, other, port, metrics = run(body())
    assert status == 201
    assert set(issued) == {"id", "url", "token", "expires_at"}
    assert issued["url"] == f"ws://127.0.0.1:{port}/v1/stream?token={issued['token']}"
    assert issued["expires_at"] == pytest.approx(time.time() + 60, abs=10)
    assert first[0] == 101 and first[1]["ready"]["type"] == "ready"
    assert first[1]["events"][-1]["type"] == "end"
    assert again == (401, None)  # single use
    assert other["id"] != issued["id"] and other["token"] != issued["token"]
    assert metrics.sessions_issued == 2


def test_expired_forged_and_missing_tokens_are_refused() -> None:
    async def body():
        async with running_server(token=TOKEN, session_ttl=0.3) as server:
            port = server.port
            _, issued = await asyncio.to_thread(post, port)
            await asyncio.sleep(0.5)
            expired = await handshake(issued["url"])
            _, fresh = await asyncio.to_thread(post, port)
            session, expiry, signature = fresh["token"].split(".")
            later = str(int(expiry) + 3_600_000)
            base = f"ws://127.0.0.1:{port}/v1/stream?token="
            forged = [f"{session}.{later}.{signature}", f"{session}.{expiry}.{signature[:-2]}xx",
                      "garbage", fresh["token"] + ".x"]
            refused = [await handshake(base + token) for token in forged]
            no_auth = await asyncio.to_thread(post, port, token=None)
            wrong = await asyncio.to_thread(post, port, token="nope")
            still_valid = await handshake(fresh["url"])  # the forgeries did not use it up
            server_token = await handshake(base + TOKEN)
            return expired, refused, no_auth, wrong, still_valid, server_token

    expired, refused, no_auth, wrong, still_valid, server_token = run(body())
    assert expired == (401, None)
    assert all(result == (401, None) for result in refused)
    assert no_auth[0] == 401 and wrong[0] == 401
    assert still_valid[0] == 101
    assert server_token[0] == 101  # the server token still works, any number of times


def test_session_route_methods_and_servers_without_a_token() -> None:
    async def body():
        async with running_server(token=TOKEN) as server:
            get = await asyncio.to_thread(post, server.port, method="GET")
        async with running_server() as open_server:
            none = await asyncio.to_thread(post, open_server.port, token=None)
        return get, none

    get, none = run(body())
    assert get[0] == 405
    assert none[0] == 404 and "need a server token" in none[1]


def test_a_session_url_behind_a_tls_proxy_is_wss() -> None:
    async def body():
        async with running_server(token=TOKEN) as server:
            return await asyncio.to_thread(
                post, server.port, headers={"X-Forwarded-Proto": "https",
                                            "Host": "diarize.example.com"})

    status, issued = run(body())
    assert status == 201 and issued["url"].startswith("wss://diarize.example.com/v1/stream?")


def test_tokens_of_one_server_work_in_its_other_processes_but_not_elsewhere() -> None:
    clock = [1000.0]
    first = SessionTokens(TOKEN, ttl=60, clock=lambda: clock[0])
    second = SessionTokens(TOKEN, ttl=60, clock=lambda: clock[0])  # another worker
    stranger = SessionTokens("another-token", ttl=60, clock=lambda: clock[0])
    issued = first.issue()
    assert not stranger.valid(issued.token)
    assert second.redeem(issued.token) == issued.id
    assert second.redeem(issued.token) is None
    clock[0] += 61
    assert first.valid(first.issue().token)  # one issued now is valid now
    late = SessionTokens(TOKEN, ttl=60, clock=lambda: clock[0])
    assert late.redeem(issued.token) is None  # expired
