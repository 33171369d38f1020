"""The plain HTTP side of the port, through a bare socket: methods, HEAD, odd paths and
duplicate headers get a 4xx, never a 500 with a traceback in the log."""
from __future__ import annotations

import asyncio
import logging

import pytest

from tests.test_server_support import handshake, open_stream, run, running_server

WEBSOCKET_HEADERS = ("Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def _request(port: int, text: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one raw HTTP request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(text.encode("latin-1"))
    try:
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            body = await reader.read()
    finally:
        writer.close()
    return int(lines[0].split()[1]), headers, body


def _ask(requests: list[str], **settings) -> list[tuple[int, dict[str, str], bytes]]:
    async def body():
        async with running_server(**settings) as server:
            return [await _request(server.port, text) for text in requests]

    return run(body())


def _get(method: str, path: str, extra: str = "") -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/", "/app.js"])
def test_only_get_and_head_are_answered(path: str) -> None:
    methods = ["POST", "PUT", "DELETE", "TRACE", "OPTIONS", "GETX"]
    answers = _ask([_get(m, path) for m in methods] + [_get("GET", path), _get("HEAD", path)])
    for method, (status, headers, _) in zip(methods, answers):
        assert status == 405, method
        assert headers["Allow"] == "GET, HEAD"
    (get_status, get_headers, get_body), (head_status, head_headers, head_body) = answers[-2:]
    assert get_status == head_status == 200 and get_body
    assert head_body == b""
    assert head_headers["Content-Length"] == get_headers["Content-Length"]
    assert head_headers["Content-Type"] == get_headers["Content-Type"]


def test_the_stream_route_takes_get_only() -> None:
    answers = _ask([_get(m, "/v1/stream", WEBSOCKET_HEADERS) for m in ("POST", "HEAD")])
    assert [(status, headers["Allow"]) for status, headers, _ in answers] == \
        [(405, "GET"), (405, "GET")]


@pytest.mark.parametrize("length", [100, 101, 255, 256, 5000])
def test_long_paths_are_not_found(length: int) -> None:
    [(status, _, _)] = _ask([_get("GET", "/" + "a" * length)])
    assert status == 404


def test_odd_paths_are_not_found() -> None:
    paths = ["/%00", "/app.js/..", "/..", "/.hidden", "/a/b", "healthz", "/index.html%2f"]
    assert [status for status, _, _ in _ask([_get("GET", p) for p in paths])] == \
        [404] * len(paths)
    [(status, _, _)] = _ask([_get("POST", "/nope")])
    assert status == 404


@pytest.mark.parametrize("token", [None, "s3cret"])
@pytest.mark.parametrize("header", ["Origin: http://a\r\nOrigin: http://b",
                                    "Authorization: Bearer s3cret\r\nAuthorization: Bearer x"])
def test_duplicate_origin_or_authorization_is_a_bad_request(header: str, token) -> None:
    [(status, _, body)] = _ask([_get("GET", "/v1/stream", WEBSOCKET_HEADERS + header + "\r\n")],
                               token=token, allowed_origins=("http://a",))
    assert status == 400 and b"more than one" in body


def test_the_websocket_handshake_still_opens() -> None:
    async def body():
        async with running_server() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(handshake())
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return head

    assert run(body()).startswith(b"HTTP/1.1 101")


def test_debug_logs_of_the_server_mask_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")  # streamer serve sets WARNING

    async def body():
        async with running_server(token="s3cret-t0ken") as server:
            ws, _ = await open_stream(server, query="x=1&token=s3cret-t0ken",
                                      headers={"Authorization": "Bearer s3cret-t0ken"})
            await ws.close()
            return await _request(server.port, _get("GET", "/healthz?token=s3cret-t0ken",
                                                    "Authorization: Bearer s3cret-t0ken\r\n"))

    assert run(body())[0] == 200
    server_lines = [r.getMessage() for r in caplog.records
                    if not r.name.startswith("websockets.client")]
    assert any("Authorization: [redacted]" in line for line in server_lines)
    assert any("?x=1&token=[redacted]" in line for line in server_lines)
    assert not [line for line in server_lines if "s3cret-t0ken" in line]
