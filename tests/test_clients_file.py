"""The file client: unit pieces, then streams of sample.wav through a real server process."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clients.common import (  # noqa: E402
    StreamError,
    TurnPrinter,
    final_turns,
    rttm_lines,
    start_message,
)
from clients.file import read_audio, stream_file  # noqa: E402
from tests.paths import EVAL, SAMPLE  # noqa: E402

TIMEOUT_FACTOR = float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))
TOKEN = secrets.token_urlsafe(12)

needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} is missing")


# ---- pieces that need no server ------------------------------------------------------


def test_read_audio_keeps_16bit_pcm_and_native_rate(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    stereo = (np.arange(44100 * 2, dtype=np.int16) % 1000).reshape(-1, 2)
    sf.write(path, stereo, 44100, subtype="PCM_16")
    audio = read_audio(path)
    assert (audio.sample_rate, audio.channels, audio.encoding) == (44100, 2, "pcm_s16le")
    chunks = list(audio.chunks(0.1))
    assert sum(len(chunk) for chunk in chunks) == stereo.size * 2
    assert len(chunks[0]) == 4410 * 2 * 2
    assert np.array_equal(np.frombuffer(b"".join(chunks), "<i2").reshape(-1, 2), stereo)


def test_read_audio_downmixes_many_channels_and_resamples_odd_rates(tmp_path: Path) -> None:
    path = tmp_path / "surround.flac"
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(96000) / 96000)
    sf.write(path, np.stack([tone, tone, tone, np.zeros_like(tone)], axis=1), 96000)
    audio = read_audio(path)
    assert (audio.channels, audio.sample_rate, audio.encoding) == (1, 16000, "pcm_f32le")
    assert audio.duration == pytest.approx(1.0, abs=0.01)
    assert float(np.abs(audio.frames).max()) == pytest.approx(0.375, abs=0.02)


def test_final_turns_and_rttm() -> None:
    events: list[dict[str, Any]] = [
        {"type": "ready"},
        {"type": "turn", "id": 1, "speaker": "SPEAKER_01", "start": 2.0, "end": 2.5, "final": False},
        {"type": "turn", "id": 1, "speaker": "SPEAKER_01", "start": 2.0, "end": 3.25, "final": True},
        {"type": "turn", "id": 0, "speaker": "SPEAKER_00", "start": 0.5, "end": 1.75, "final": True},
        {"type": "end", "duration": 4.0, "speakers": []},
    ]
    turns = final_turns(events)
    assert [turn["id"] for turn in turns] == [0, 1]
    assert rttm_lines(turns, "my file") == [
        "SPEAKER my_file 1 0.500 1.250 <NA> <NA> SPEAKER_00 <NA> <NA>",
        "SPEAKER my_file 1 2.000 1.250 <NA> <NA> SPEAKER_01 <NA> <NA>",
    ]
    assert json.loads(start_message(48000, config={"latency": 2})) == {
        "type": "start", "sample_rate": 48000, "encoding": "pcm_s16le", "channels": 1, "config": {"latency": 2},
    }


def test_turn_printer_redraws_interim_turns_in_place_on_a_terminal() -> None:
    live = io.StringIO()
    printer = TurnPrinter(live, colour=True, live=True)
    printer.event({"type": "turn", "id": 0, "speaker": "SPEAKER_00", "start": 0.0, "end": 0.5, "final": False})
    printer.event({"type": "turn", "id": 0, "speaker": "SPEAKER_00", "start": 0.0, "end": 1.0, "final": True})
    printer.event({"type": "turn", "id": 1, "speaker": "SPEAKER_01", "start": 1.0, "end": 1.5, "final": False})
    assert live.getvalue().endswith("\x1b[32m[    1.00 -     1.50] SPEAKER_01\x1b[0m …")
    # the next turn's interim may come before the previous turn's final event: it stays drawn
    printer.event({"type": "turn", "id": 2, "speaker": "SPEAKER_00", "start": 1.5, "end": 2.0, "final": False})
    printer.event({"type": "turn", "id": 1, "speaker": "SPEAKER_01", "start": 1.0, "end": 1.5, "final": True})
    assert live.getvalue().endswith("\r\x1b[K\x1b[32m[    1.00 -     1.50] SPEAKER_01\x1b[0m\n"
                                    "\x1b[31m[    1.50 -     2.00] SPEAKER_00\x1b[0m …")
    printer.summary({"type": "end", "duration": 2.0, "speakers": [{"label": "SPEAKER_00", "speech": 1.0}]})
    text = live.getvalue()
    assert "\r\x1b[K" in text and "\x1b[31m" in text and "\x1b[32m" in text
    assert text.count("\n") == 4  # two final turns and two summary lines; interims stay in place

    piped = io.StringIO()
    plain = TurnPrinter(piped)  # not a terminal: final turns only, no colour
    plain.event({"type": "turn", "id": 0, "speaker": "SPEAKER_00", "start": 0.0, "end": 0.5, "final": False})
    plain.event({"type": "turn", "id": 0, "speaker": "SPEAKER_00", "start": 0.0, "end": 1.0, "final": True})
    assert piped.getvalue() == "[    0.00 -     1.00] SPEAKER_00\n"


# ---- against the real server ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def streamer_serve_process(extra_args: list[str] | None = None) -> Iterator[str]:
    """``python -m streamer serve`` on a free port; yields its base URL once /healthz is 200."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "serve", "--host", "127.0.0.1", "--port", str(port),
             *(extra_args or [])],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90 * TIMEOUT_FACTOR
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise RuntimeError(f"server exited with {process.returncode}:\n{output}")
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/healthz", timeout=2) as reply:
                    if reply.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not answer /healthz in time")
                time.sleep(0.2)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def stream_url() -> Iterator[str]:
    # These tests are about the client. The tick rule of admission (its own tests are in
    # test_server_admission.py) paces newcomers once ticks near their limit, which a busy
    # test machine reaches: it would refuse this module's streams, opened one after another.
    # (`--token=` because a token may start with "-".)
    with streamer_serve_process([f"--token={TOKEN}", "--max-tick", "0"]) as base:
        yield base.replace("http://", "ws://") + "/v1/stream"


def speech_regions(file_id: str) -> list[tuple[float, float]]:
    regions = []
    for line in (EVAL / "reference.rttm").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0] == "SPEAKER" and fields[1] == file_id:
            start = float(fields[3])
            regions.append((start, start + float(fields[4])))
    return regions


def covered(regions: list[tuple[float, float]], turns: list[tuple[float, float]], step: float = 0.01) -> float:
    """Fraction of the time in ``regions`` that some turn covers."""
    horizon = max(end for _, end in regions + turns)
    grid = np.arange(0, horizon, step)
    inside = np.zeros_like(grid, dtype=bool)
    for start, end in regions:
        inside |= (grid >= start) & (grid < end)
    hit = np.zeros_like(inside)
    for start, end in turns:
        hit |= (grid >= start) & (grid < end)
    return float((inside & hit).sum() / max(inside.sum(), 1))


@needs_sample
def test_stream_file_gets_turns_that_cover_the_speech(stream_url: str) -> None:
    seen: list[dict[str, Any]] = []
    events = asyncio.run(
        asyncio.wait_for(stream_file(stream_url, SAMPLE, speed=0, token=TOKEN, on_event=seen.append), 120)
    )
    assert events == seen
    assert events[0]["type"] == "ready" and events[0]["sample_rate"] == 16000
    assert events[-1]["type"] == "end"
    assert events[-1]["duration"] == pytest.approx(30.0, abs=0.05)
    assert [e["type"] for e in events].count("end") == 1
    turns = final_turns(events)
    assert len(turns) >= 2
    for turn in turns:
        assert 0 <= turn["start"] < turn["end"] <= 30.05, turn
    for before, after in zip(turns, turns[1:]):
        assert before["end"] <= after["start"] + 1e-6, f"final turns overlap: {before} {after}"
    reference, found = speech_regions("sample"), [(t["start"], t["end"]) for t in turns]
    coverage = covered(reference, found)
    assert coverage >= 0.8, f"final turns cover only {coverage:.0%} of the reference speech"
    precision = covered(found, reference)
    assert precision >= 0.8, f"only {precision:.0%} of the final turns' time is reference speech"
    labels = {turn["speaker"] for turn in turns}
    assert labels <= {speaker["label"] for speaker in events[-1]["speakers"]}


@needs_sample
def test_command_line_writes_rttm_and_json(stream_url: str, tmp_path: Path) -> None:
    rttm, events_json = tmp_path / "out.rttm", tmp_path / "events.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "clients" / "file.py"), str(SAMPLE), "--url", stream_url, "--speed", "0",
         "--rttm", str(rttm), "--json", str(events_json)],
        env={**os.environ, "STREAMER_TOKEN": TOKEN}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "end: 30.00 s of audio" in result.stdout
    lines = rttm.read_text().splitlines()
    assert lines
    for line in lines:
        fields = line.split()
        assert len(fields) == 10 and fields[:3] == ["SPEAKER", "sample", "1"], line
        assert float(fields[3]) >= 0 and float(fields[4]) > 0 and fields[7].startswith("SPEAKER_")
    events = json.loads(events_json.read_text())
    assert events[0]["type"] == "ready" and events[-1]["type"] == "end"
    assert len(lines) == len(final_turns(events))


def test_refusals_and_errors_become_stream_errors(stream_url: str, tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    sf.write(path, np.zeros(1600, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(StreamError) as refused:
        asyncio.run(stream_file(stream_url, path, speed=0, token="wrong"))
    assert refused.value.code == "unauthorized"
    with pytest.raises(StreamError) as bad:
        asyncio.run(stream_file(stream_url, path, speed=0, token=TOKEN, config={"no_such_setting": 1}))
    assert bad.value.code == "bad_config"
    result = subprocess.run(
        [sys.executable, str(REPO / "clients" / "file.py"), str(path), "--url", stream_url, "--token", "wrong"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "unauthorized" in result.stderr


def test_real_time_pacing_and_silence(stream_url: str, tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(int(1.5 * 16000), dtype=np.int16), 16000, subtype="PCM_16")
    started = time.monotonic()
    events = asyncio.run(stream_file(stream_url, path, speed=2.0, token=TOKEN))
    elapsed = time.monotonic() - started
    assert 0.7 <= elapsed < 10 * TIMEOUT_FACTOR, elapsed  # 1.5 s of audio at 2x real time
    assert events[-1]["type"] == "end" and events[-1]["duration"] == pytest.approx(1.5, abs=0.05)
    assert final_turns(events) == []
