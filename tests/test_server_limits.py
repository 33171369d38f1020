"""Handshake checks (auth, origin, connection limit), stream limits, HTTP routes, metrics,
flow control and settings validation."""
from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer.server import ServerSettings
from tests.fakes import fake_frontend, tone_conversation
from tests.test_server_support import (
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
    url,
    wait_idle,
)


async def _status(server, query: str = "", headers: dict | None = None) -> int:
    """HTTP status of a websocket handshake (101 when it opens)."""
    try:
        async with connect(url(server, query), additional_headers=headers):
            return 101
    except InvalidStatus as error:
        return error.response.status_code


def test_token_in_header_or_query_wrong_or_missing_is_refused() -> None:
    async def body():
        async with running_server(token="s3cret") as server:
            statuses = {
                "none": await _status(server),
                "header": await _status(server, headers={"Authorization": "Bearer s3cret"}),
                "query": await _status(server, query="token=s3cret"),
                "wrong header": await _status(server, headers={"Authorization": "Bearer nope"}),
                "wrong query": await _status(server, query="token=s3cre"),
                "basic": await _status(server, headers={"Authorization": "Basic s3cret"}),
            }
            ws, ready = await open_stream(server, headers={"Authorization": "Bearer s3cret"})
            await ws.close()
            return statuses, server.metrics.render()

    statuses, metrics = run(body())
    assert statuses == {"none": 401, "header": 101, "query": 101, "wrong header": 401,
                        "wrong query": 401, "basic": 401}
    assert 'streamer_rejected_total{reason="unauthorized"} 4' in metrics


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_the_token_unless_public(public: bool) -> None:
    def get(port: int, path: str, headers: dict | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    async def body():
        async with running_server(token="s3cret", public_metrics=public) as server:
            return [await asyncio.to_thread(get, server.port, *args) for args in [
                ("/metrics",), ("/metrics", {"Authorization": "Bearer nope"}),
                ("/metrics", {"Authorization": "Bearer s3cret"}), ("/metrics?token=s3cret",),
                ("/healthz",), ("/",)]]

    statuses = run(body())
    assert statuses == ([200, 200] if public else [401, 401]) + [200, 200, 200, 200]


@pytest.mark.parametrize("config,limit", [
    ({"duration": 60, "step": 0.05}, "min_step"),
    ({"duration": 60, "step": 0.5}, "max_window_ratio"),
    ({"step": 0.2}, "max_window_ratio"),
])
def test_streams_costlier_than_the_server_allows_are_refused(config: dict,
                                                              limit: str) -> None:
    async def body():
        async with running_server() as server:
            ws = await connect(url(server))
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000,
                                      "config": config}))
            events = await read_all(ws)
            ready = (await open_stream(server, config={"duration": 8, "step": 0.2}))[1]
            return events, ws.close_code, ready

    events, code, ready = run(body())
    assert code == 1008 and events[-1]["code"] == "bad_config"
    assert limit in events[-1]["message"]
    assert [e["type"] for e in events] == ["error"]
    assert ready["limits"]["max_window_ratio"] == 40 and ready["limits"]["min_step"] == 0.1


def test_allowed_origins() -> None:
    async def body():
        async with running_server(allowed_origins=("http://good.example",)) as server:
            return (await _status(server, headers={"Origin": "http://good.example"}),
                    await _status(server, headers={"Origin": "http://evil.example"}),
                    await _status(server))

    assert run(body()) == (101, 403, 101)


def test_connection_limit_rejects_the_next_one_clearly() -> None:
    async def body():
        async with running_server(max_connections=2) as server:
            first, _ = await open_stream(server)
            second, _ = await open_stream(server)
            with pytest.raises(InvalidStatus) as refused:
                await open_stream(server)
            await first.close()
            await wait_idle_count(server, 1)
            third, ready = await open_stream(server)
            await second.close()
            await third.close()
            return refused.value.response, ready

    response, ready = run(body())
    assert response.status_code == 503
    assert b"too_many_connections" in response.body
    assert ready["type"] == "ready"


async def wait_idle_count(server, count: int) -> None:
    deadline = time.monotonic() + scaled(5)
    while len(server.sessions) > count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def test_stream_length_limit() -> None:
    audio = tone_conversation([(300.0, 1.0), (None, 0.5), (700.0, 1.5)])

    async def body():
        async with running_server(max_stream_seconds=2.0) as server:
            ws, _ = await open_stream(server)
            await send_audio(ws, audio, chunk=0.25)
            return await read_all(ws), ws.close_code

    events, code = run(body())
    assert code == 1008 and events[-1]["code"] == "stream_too_long"
    assert finals(events)[0][0] == "SPEAKER_00"
    assert max(end for _, _, end in finals(events)) <= 2.0 + 1e-6


@pytest.mark.parametrize("started", [False, True])
def test_idle_timeout(started: bool) -> None:
    async def body():
        async with running_server(idle_timeout=0.3) as server:
            begun = time.monotonic()
            if started:
                ws, _ = await open_stream(server)
            else:
                ws = await connect(url(server))
            events = await read_all(ws)
            return events, ws.close_code, time.monotonic() - begun

    events, code, elapsed = run(body())
    assert code == 1008 and events[-1]["code"] == "idle_timeout"
    assert elapsed < scaled(3.0)


def test_healthz_metrics_web_page_and_404() -> None:
    def get(port: int, path: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as error:
            return error.code, "", b""

    async def body():
        async with running_server() as server:
            await stream(server, conversation(0))
            await wait_idle(server)
            paths = ["/healthz", "/metrics", "/", "/app.js", "/nope", "/../pyproject.toml",
                     "/v1/stream"]
            return {p: await asyncio.to_thread(get, server.port, p) for p in paths}

    answers = run(body())
    assert answers["/healthz"][0] == 200 and answers["/healthz"][2] == b"ok\n"
    assert answers["/"][0] == 200 and answers["/"][1].startswith("text/html")
    assert answers["/app.js"][0] == 200 and "javascript" in answers["/app.js"][1]
    assert answers["/nope"][0] == 404 and answers["/../pyproject.toml"][0] == 404
    assert answers["/v1/stream"][0] == 426  # upgrade required
    status, content_type, text = answers["/metrics"]
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    _check_prometheus(text.decode())


def _check_prometheus(text: str) -> None:
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$')
    values = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        assert sample.match(line), f"not a Prometheus sample line: {line!r}"
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    assert values["streamer_connections_open"] == 0
    assert values["streamer_connections_total"] == 1
    assert values["streamer_audio_processed_seconds_total"] == pytest.approx(
        len(conversation(0)) / 16000, abs=0.01)
    assert values["streamer_step_latency_seconds_count"] > 0
    assert values['streamer_step_latency_seconds_bucket{le="+Inf"}'] == \
        values["streamer_step_latency_seconds_count"]
    assert values["streamer_turns_sent_total"] > 0
    assert "streamer_queue_depth_seconds" in values


def _slow_frontend(delay: float):
    """Fake models that take ``delay`` seconds per buffer (slower than real time)."""
    frontend = fake_frontend()
    make_stream = frontend.stream

    def stream_factory(config):
        inner = make_stream(config)

        class Slow:
            def analyze(self, buffer, start, speakers=None):
                time.sleep(delay)
                return inner.analyze(buffer, start, speakers)

        return Slow()

    frontend.stream = stream_factory
    return frontend


def test_server_falling_behind_warns_pauses_and_loses_nothing() -> None:
    audio = tone_conversation([(300.0, 1.0), (None, 0.5), (700.0, 1.0)])

    async def body():
        async with running_server(_slow_frontend(0.2), max_pending_seconds=0.5,
                                  max_feed_seconds=0.25, max_window_ratio=100) as server:
            result = await stream(server, audio, chunk=0.05, speed=1.0, config={"step": 0.1})
            await wait_idle(server)
            return result, server.metrics.render()

    (_, events, code), metrics = run(body(), timeout=60)
    warnings = [e for e in events if e["type"] == "warning"]
    assert warnings and warnings[0]["code"] == "falling_behind"
    # More than max_pending_seconds behind, as sent: rounded to the millisecond.
    assert warnings[0]["behind"] >= 0.5
    assert code == 1000
    assert events[-1]["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    assert finals(events) == expected_finals(audio, {"step": 0.1})
    assert re.search(r"^streamer_falling_behind_total [1-9]", metrics, re.M)
    assert re.search(r"^streamer_backpressure_pauses_total [1-9]", metrics, re.M)


def test_batched_server_gives_the_same_turns_as_file_mode() -> None:
    audios = [conversation(pattern) for pattern in range(6)]

    async def body():
        async with running_server(batch_max_size=8, min_tick=0.05) as server:
            results = await asyncio.gather(*(stream(server, a) for a in audios))
            return results, server.metrics.render()

    results, metrics = run(body())
    for audio, (_, events, code) in zip(audios, results):
        assert code == 1000 and finals(events) == expected_finals(audio)
    rows = re.search(r'^streamer_batch_rows_sum\{model="segmentation"\} (\d+)', metrics, re.M)
    count = re.search(r'^streamer_batch_rows_count\{model="segmentation"\} (\d+)', metrics,
                      re.M)
    assert rows and count and int(rows.group(1)) > int(count.group(1)), \
        "no segmentation pass was shared by two streams"


@pytest.mark.parametrize("changes", [
    {"max_connections": 0}, {"max_frame_bytes": -1}, {"idle_timeout": float("nan")},
    {"max_pending_seconds": 0}, {"max_feed_seconds": 10.0}, {"token": ""},
    {"allowed_origins": "http://a"}, {"batch_max_size": 1.5}, {"workers": 0},
    {"min_tick": -1.0}, {"batch_max_size": 0}, {"max_busy": 1.5}, {"max_busy": -0.1},
    {"max_tick": -0.1},
    {"max_connections": True},
])
def test_bad_settings_raise_value_error(changes: dict) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**changes)


def test_a_stream_the_server_is_behind_on_outlives_keepalive_pings() -> None:
    """While the server is behind a stream, it stops reading it (backpressure), so the
    client's pongs wait unread: the keep-alive must not end the stream for that."""
    audio = tone_conversation([(300.0, 2.0), (None, 0.5), (700.0, 2.0)])

    async def body():
        async with running_server(_slow_frontend(0.15), max_pending_seconds=0.3,
                                  max_feed_seconds=0.25, max_window_ratio=100,
                                  receive_queue=2, ping_interval=0.2,
                                  ping_timeout=0.3) as server:
            result = await stream(server, audio, chunk=0.05, config={"step": 0.1})
            await wait_idle(server)
            return result, server.metrics.render()

    (_, events, code), metrics = run(body(), timeout=90)
    assert code == 1000, f"closed with {code}: {events[-1:]}"
    assert events[-1]["type"] == "end"
    assert finals(events) == expected_finals(audio, {"step": 0.1})
    # Reading was paused for longer than the ping timeout, more than once.
    assert re.search(r"^streamer_backpressure_pauses_total [1-9]", metrics, re.M)
