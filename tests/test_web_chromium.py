"""End to end: the browser page in headless Chromium, a fake microphone, the real server.

Chromium plays a wav file of two people talking as its fake microphone (looped); the test
clicks Start, lets the page stream one whole pass of the conversation, clicks Stop, waits
for the ``end`` event, checks that the page shows a row per speaker with its final turns, and
takes a screenshot. Chromium is driven over the DevTools protocol with ``websockets``.
Needs the Debian packages ``chromium`` (and ``espeak-ng`` when ../shared/eval is absent).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_clients_file import SAMPLE, TIMEOUT_FACTOR, streamer_serve_process  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
)


def two_voice_wav(path: Path) -> Path:
    """A 16-bit PCM wav of two alternating voices: sample.wav, else espeak-ng synthesis."""
    if SAMPLE.exists():
        audio, rate = sf.read(SAMPLE, dtype="int16")
        sf.write(path, audio, rate, subtype="PCM_16")
        return path
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail(f"need {SAMPLE} or espeak-ng (apt-get install espeak-ng) for the fake microphone")
    lines = [
        ("en+m3", "Good morning everyone, thanks for joining the weekly planning meeting today."),
        ("en+f3", "Thanks. I have two updates about the release and the new microphone client."),
        ("en+m3", "Great, please go ahead, and then we will look at the open issues together."),
        ("en+f3", "The release is ready and the browser page now draws a live speaker timeline."),
    ]
    parts = []
    for voice, text in lines:
        wav = subprocess.run([espeak, "-v", voice, "--stdout", text], check=True, capture_output=True).stdout
        part_path = path.with_suffix(".part.wav")
        part_path.write_bytes(wav)
        audio, rate = sf.read(part_path, dtype="int16")
        parts += [audio, np.zeros(int(0.4 * rate), dtype=np.int16)]
    part_path.unlink()
    sf.write(path, np.concatenate(parts), rate, subtype="PCM_16")
    return path


class DevTools:
    """A minimal Chrome DevTools Protocol session on one page target."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.log: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._read_messages()

    async def _read_messages(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method = message.get("method", "")
            params = message.get("params", {})
            if method == "Runtime.consoleAPICalled":
                args = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                self.log.append(f"console.{params.get('type')}: {args}")
            elif method == "Runtime.exceptionThrown":
                self.log.append(f"exception: {json.dumps(params.get('exceptionDetails', {}))[:500]}")
            await self.events.put(message)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[message_id] = future
        await self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 30 * TIMEOUT_FACTOR)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for_event(self, method: str, timeout: float) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                event = await self.events.get()
                if event.get("method") == method:
                    return event

        return await asyncio.wait_for(wait(), timeout)

    async def click(self, selector: str) -> None:
        """A real mouse click (a user gesture, as the AudioContext wants) at the element's centre."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    async def wait_until(self, expression: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = await self.evaluate("JSON.stringify({status: streamerState.status, "
                                            "events: streamerState.events.slice(-5)})")
                raise AssertionError(f"timed out waiting for {expression}; page: {state}; log: {self.log[-10:]}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def chromium(fake_audio: Path, profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with ``fake_audio`` as its microphone; yields a DevTools page session."""
    args = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--mute-audio", "--window-size=1100,900",
        f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_audio}", "about:blank",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30 * TIMEOUT_FACTOR
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit code {process.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        page = next(target for target in targets if target.get("type") == "page")
        async with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            tools = DevTools(ws)
            try:
                for domain in ("Page", "Runtime"):
                    await tools.call(f"{domain}.enable")
                yield tools
            finally:
                tools.reader.cancel()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


STATE_JS = (
    "JSON.parse(JSON.stringify({phase: streamerState.phase, status: streamerState.status,"
    " error: streamerState.error, sampleRate: streamerState.sampleRate, ready: streamerState.ready,"
    " end: streamerState.end, finals: streamerState.finals, audioSeconds: streamerState.audioSeconds,"
    " firstEvent: streamerState.events[0],"
    " summaryRows: document.querySelectorAll('#summary tr').length,"
    " speakerRows: [...document.querySelectorAll('#timeline .row')].map((row) =>"
    "   ({speaker: row.dataset.speaker, finals: row.querySelectorAll('.turn.final').length}))}))"
)


async def readiness(base: str, status: int, timeout: float = 30) -> None:
    """Waits until the server's /readyz answers ``status``."""
    from tests.test_server_admission import _get

    port = urlsplit(base).port
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while (last := (await asyncio.to_thread(_get, port, "/readyz"))[0]) != status:
        assert time.monotonic() < deadline, f"/readyz answers {last}, not {status}"
        await asyncio.sleep(0.2)


async def drive_page(page_url: str, fake_audio: Path, profile: Path, screenshot: Path
                     ) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Two rounds of Start ... Stop on one page, the first over the whole of ``fake_audio``,
    then a Start that the full server refuses; returns the page state after each round and
    the page's status after the refusal."""
    base = page_url.split("/?", 1)[0]
    # both voices must have been heard, wherever in the looped file the stream started
    duration = sf.info(fake_audio).duration
    async with chromium(fake_audio, profile) as page:
        await page.call("Page.navigate", url=page_url)
        await page.wait_for_event("Page.loadEventFired", 30 * TIMEOUT_FACTOR)
        assert await page.evaluate("typeof window.streamerState") == "object", page.log
        await page.click("#start")
        await page.wait_until("streamerState.phase === 'live'", 30)
        await page.wait_until("streamerState.finals.length >= 1", 40)
        await page.wait_until("document.querySelectorAll('#timeline .turn.final').length >= 1", 5)
        await page.wait_until(f"streamerState.audioSeconds >= {duration:.2f}", duration + 30)
        await page.click("#stop")
        await page.wait_until("streamerState.end !== null", 30)
        shot = await page.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        first = await page.evaluate(STATE_JS)
        # a second stream from the same page starts afresh and is not cut short by the first
        await readiness(base, 200)  # the server's one stream slot is free once the first has closed
        await page.click("#start")
        await page.wait_until("streamerState.phase === 'live' && streamerState.audioSeconds >= 1.5", 30)
        await page.click("#stop")
        await page.wait_until("streamerState.end !== null", 30)
        second = await page.evaluate(STATE_JS)
        # another client holds the one slot: the page says why its stream was refused
        await readiness(base, 200)
        stream_url = base.replace("http://", "ws://") + "/v1/stream?" + page_url.split("?", 1)[1]
        async with connect(stream_url):
            await readiness(base, 503)
            await page.click("#start")
            await page.wait_until("streamerState.phase === 'error'", 30)
            refused = await page.evaluate("streamerState.status")
        return first, second, refused


def test_browser_page_streams_microphone_and_shows_turns(tmp_path: Path) -> None:
    fake_audio = two_voice_wav(tmp_path / "two_voices.wav")
    profile = tmp_path / "profile"
    profile.mkdir()
    screenshot = tmp_path / "page.png"
    token = secrets.token_urlsafe(12)  # the page passes ?token= on to its websocket
    # The accurate preset: sample.wav's two people must come out as two speakers through
    # the page (the embedded preset merges them from some start points). One stream at a
    # time: each round starts on an idle server, which admits one stream even where the
    # accurate preset falls behind real time.
    serve = [f"--token={token}", "--preset", "accurate", "--max-connections", "1"]
    with streamer_serve_process(serve) as base:
        page_url = f"{base}/?token={token}"
        state, again, refused = asyncio.run(
            asyncio.wait_for(drive_page(page_url, fake_audio, profile, screenshot), 300))

    assert state["error"] is None, state
    assert state["phase"] == "done", state
    assert 8000 <= state["sampleRate"] <= 48000
    assert state["ready"]["type"] == "ready"
    finals = state["finals"]
    assert finals, state
    for turn in finals:
        assert 0 <= turn["start"] < turn["end"] <= state["end"]["duration"] + 0.5, turn
    for before, after in zip(finals, finals[1:]):
        assert before["end"] <= after["start"] + 1e-6, "final turns overlap"
    assert state["end"]["duration"] >= finals[-1]["end"] - 0.5
    assert state["end"]["duration"] == pytest.approx(state["audioSeconds"], abs=1.0)
    assert state["end"]["duration"] >= sf.info(fake_audio).duration
    # the page shows one row per speaker of the final turns, each with its final turns
    shown = state["speakerRows"]
    turns = [(t["speaker"], round(t["start"], 1), round(t["end"], 1)) for t in finals]
    assert shown, f"no speaker shown; final turns: {turns}"
    assert {row["speaker"] for row in shown} == {t["speaker"] for t in finals}, turns
    assert all(row["finals"] >= 1 for row in shown), shown
    if SAMPLE.exists():
        assert len(shown) == 2, f"sample.wav's two people gave {len(shown)} speakers: {turns}"
    assert state["ready"]["models"]["preset"] == "accurate"
    assert len(state["end"]["speakers"]) >= len(shown), state["end"]["speakers"]
    assert state["summaryRows"] == len(state["end"]["speakers"]) + 1
    assert again["error"] is None and again["phase"] == "done", again
    assert again["firstEvent"]["type"] == "ready" and again["ready"]["session"] != state["ready"]["session"]
    assert again["end"]["duration"] >= 1.4 and again["end"]["duration"] == pytest.approx(again["audioSeconds"], abs=0.5)
    assert "the server refused a new stream: the server is at its limit of 1 streams" in refused, refused
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    if os.environ.get("STREAMER_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["STREAMER_KEEP_SCREENSHOT"])


async def interrupted_page_stream(tones: Path, profile: Path, port: int, before: str,
                                  cut: Callable[[], Awaitable[Any]], seconds: float
                                  ) -> dict[str, Any]:
    """The page at ``port`` streams ``tones`` as its microphone; once ``before`` (a page
    expression) holds, ``cut()`` interrupts the stream; once the page has resumed it and
    sent ``seconds`` of audio, Stop. Returns the page's state at the end."""
    async with chromium(tones, profile) as page:
        await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        await page.wait_for_event("Page.loadEventFired", 30 * TIMEOUT_FACTOR)
        await page.click("#start")
        await page.wait_until(f"streamerState.phase === 'live' && {before}", 30)
        await cut()
        await page.wait_until("streamerState.reconnects === 1"
                              " && streamerState.phase === 'live'"
                              f" && streamerState.audioSeconds >= {seconds}", 40)
        await page.click("#stop")
        await page.wait_until("streamerState.end !== null", 30)
        return await page.evaluate(
            "JSON.parse(JSON.stringify({events: streamerState.events, error:"
            " streamerState.error, phase: streamerState.phase, captured:"
            " streamerState.capturedSeconds, finals: streamerState.finals}))")


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "no shared store"])
def test_the_page_resumes_its_stream_when_the_server_is_drained(tmp_path: Path,
                                                                shared: bool) -> None:
    """Two servers on one port (with a real redis-server, or sharing nothing but their
    state secret), tone models, a tone conversation as the microphone: the server holding
    the page's stream is drained; the page resumes on the other with its resume_id (else,
    refused for want of a shared store, with the state it holds and the seconds before
    its position as ``start.context``), sends again what was not processed, and its final
    ``end`` accounts for every second it captured."""
    from tests.services import redis_server
    from tests.test_clients_reconnect import drain_the_busy_one, replicas
    from tests.test_server_resume import LONG_TALK

    tones = tmp_path / "tones.wav"
    sf.write(tones, (LONG_TALK * 32767).astype(np.int16), 16000, subtype="PCM_16")
    profile = tmp_path / "profile"
    profile.mkdir()

    async def body(redis_url: str | None) -> dict[str, Any]:
        servers = await replicas(redis_url)
        try:
            return await interrupted_page_stream(
                tones, profile, servers[0].port, "streamerState.audioSeconds >= 5",
                lambda: drain_the_busy_one(servers, 0), 12)
        finally:
            for server in servers:
                await server.shutdown()

    if shared:
        with redis_server(tmp_path) as redis_url:
            state = asyncio.run(asyncio.wait_for(body(redis_url), 180))
    else:
        state = asyncio.run(asyncio.wait_for(body(None), 180))
    assert state["error"] is None and state["phase"] == "done", state
    events = state["events"]
    readies = [e for e in events if e["type"] == "ready"]
    ends = [e for e in events if e["type"] == "end"]
    assert len(readies) == 2 and len(ends) == 2 and ends[0]["reconnect"] is True
    refused = [e.get("code") for e in events if e["type"] == "error"]
    assert refused == ([] if shared else ["bad_state"])
    # By id, the continued stream saves in the same place; from the state, in a new one.
    assert (readies[1]["resume_id"] == readies[0]["resume_id"]) is shared
    assert readies[1]["offset"] == pytest.approx(ends[0]["position"])
    assert readies[1].get("context") == (None if shared else pytest.approx(
        min(15.0, ends[0]["position"]), abs=0.002))
    assert readies[1]["resumed"] == [s["label"] for s in ends[0]["speakers"]]
    # Nothing captured was lost: the stream's clock covers all of it.
    assert ends[1]["position"] == pytest.approx(state["captured"], abs=0.2)
    cut = ends[0]["position"]
    after = [t for t in state["finals"] if t["start"] >= cut]
    assert after and {t["speaker"] for t in state["finals"]} == {"SPEAKER_00", "SPEAKER_01"}
    assert {s["label"] for s in ends[1]["speakers"]} == {"SPEAKER_00", "SPEAKER_01"}


def test_the_page_resumes_its_stream_after_a_lost_connection(tmp_path: Path) -> None:
    """One server, tone models, a tone conversation as the microphone: the stream's
    connection is cut mid-stream (the server's transport aborted: the page sees 1006).
    The page reopens the stream by its resume_id, capture going on, sends again from the
    ready's offset, shows the final turns the server could not send once, and its final
    ``end`` accounts for every second it captured."""
    from streamer.server.app import DiarizationServer
    from streamer.server.settings import ServerSettings
    from tests.fakes import fake_frontend
    from tests.test_server_resume import LONG_TALK

    tones = tmp_path / "tones.wav"
    sf.write(tones, (LONG_TALK * 32767).astype(np.int16), 16000, subtype="PCM_16")
    profile = tmp_path / "profile"
    profile.mkdir()

    async def body() -> dict[str, Any]:
        server = DiarizationServer(fake_frontend(), ServerSettings())
        await server.start("127.0.0.1", 0)
        try:
            async def cut() -> None:
                next(iter(server.sessions)).connection.transport.abort()

            return await interrupted_page_stream(
                tones, profile, server.port, "streamerState.finals.length >= 1", cut, 14)
        finally:
            await server.shutdown()

    state = asyncio.run(asyncio.wait_for(body(), 180))
    assert state["error"] is None and state["phase"] == "done", state
    events = state["events"]
    readies = [e for e in events if e["type"] == "ready"]
    ends = [e for e in events if e["type"] == "end"]
    assert len(readies) == 2 and len(ends) == 1
    assert readies[1]["resume_id"] == readies[0]["resume_id"] and readies[1]["offset"] > 0
    assert readies[1]["context"] == pytest.approx(min(15.0, readies[1]["offset"]))
    assert readies[1]["resumed"]
    # Nothing captured was lost: the stream's clock covers all of it.
    assert ends[0]["position"] == pytest.approx(state["captured"], abs=0.2)
    # Each final turn is listed once, replayed ones included.
    assert any(e.get("replayed") for e in events)
    keys = [(t["start"], t["end"], t["speaker"]) for t in state["finals"]]
    assert len(keys) == len(set(keys))
    covered = sorted((t["start"], t["end"]) for t in state["finals"])
    assert covered[-1][1] > readies[1]["offset"]
    assert {t["speaker"] for t in state["finals"]} == {"SPEAKER_00", "SPEAKER_01"}
