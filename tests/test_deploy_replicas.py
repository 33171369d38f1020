"""Two ``streamer serve`` replicas behind HAProxy (``deploy/haproxy/haproxy.cfg``) with a
real redis-server: voices are enrolled through the balancer into the shared registry,
clients stream through it, one replica is SIGTERMed mid-stream, and its client resumes on
the other replica from the state in Redis, with labels, identities and times continuing
and no final turn lost."""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clients.common import final_turns
from clients.file import read_audio, stream_audio
from streamer.rttm import read_rttm
from tests.paths import EVAL, REPO
from tests.services import free_port, need, redis_server, stop, wait_port

pytestmark = pytest.mark.slow

AUDIO = EVAL / "synth" / "dev2a.wav"
FRAME = 0.01


def http(port: int, path: str, data: bytes | None = None, method: str = "GET"
         ) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def open_streams(port: int) -> int:
    """``streamer_connections_open`` of the replica on ``port`` (its /metrics)."""
    _, body = http(port, "/metrics")
    return int(float(re.search(rb"^streamer_connections_open (\S+)$", body, re.M)[1]))


def haproxy_config(folder: Path, listen: int, replicas: list[int]) -> Path:
    """The shipped configuration, with this machine's addresses and file-descriptor limit,
    and without TLS (no certificate here)."""
    lines = []
    for line in (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text().splitlines():
        text = line.strip()
        if text.startswith("bind :80"):
            line = f"    bind 127.0.0.1:{listen}"
        elif text.startswith("maxconn"):
            line = "    maxconn 512"
        elif "ssl" in text and text.startswith(("bind", "http-request redirect")):
            continue
        elif text.startswith("server "):
            continue
        lines.append(line)
    lines += [f"    server replica{i} 127.0.0.1:{port}" for i, port in enumerate(replicas)]
    path = folder / "haproxy.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``(balancer port, [(replica port, process)], logs folder)``."""
    if not AUDIO.exists():
        pytest.skip("needs ../shared/eval/synth")
    haproxy = need("haproxy")
    folder = tmp_path_factory.mktemp("cluster")
    with redis_server(folder) as redis_url:
        env = {**os.environ, "STREAMER_REDIS_URL": redis_url,
               "STREAMER_STATE_SECRET": "one secret for every replica",
               "STREAMER_PRESET": "embedded", "STREAMER_PUBLIC_METRICS": "1",
               "STREAMER_MAX_LOAD": "0", "STREAMER_MAX_LAG": "0",
               "STREAMER_SHUTDOWN_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
        replicas = []
        try:
            for index in range(2):
                port = free_port()
                log = open(folder / f"replica{index}.log", "wb")
                process = subprocess.Popen(
                    [sys.executable, "-m", "streamer", "serve", "--port", str(port)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
                replicas.append((port, process))
            for port, process in replicas:
                wait_port(port, process, timeout=120)
            listen = free_port()
            config = haproxy_config(folder, listen, [port for port, _ in replicas])
            check = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True,
                                   text=True)
            assert check.returncode == 0, check.stdout + check.stderr
            balancer = subprocess.Popen([haproxy, "-db", "-f", str(config)],
                                        stdout=open(folder / "haproxy.log", "wb"),
                                        stderr=subprocess.STDOUT)
            try:
                wait_port(listen, balancer)
                yield listen, replicas, folder
            finally:
                stop(balancer)
        finally:
            for _, process in replicas:
                stop(process)


def labels(turns: list[dict], until: float) -> list[tuple | None]:
    """(speaker, identity) of each 10 ms frame up to ``until`` s (None: no final turn)."""
    frames: list[tuple | None] = [None] * int(until / FRAME)
    for turn in turns:
        for index in range(int(turn["start"] / FRAME), min(len(frames),
                                                           int(turn["end"] / FRAME))):
            frames[index] = (turn["speaker"], turn.get("identity"))
    return frames


def agreement(turns: list[dict], reference: list[dict], until: float) -> float:
    """Share of the frames where ``reference`` has a final turn that ``turns`` gives the
    same label and identity."""
    ours, theirs = labels(turns, until), labels(reference, until)
    speech = [i for i, label in enumerate(theirs) if label is not None]
    return sum(ours[i] == theirs[i] for i in speech) / max(1, len(speech))


def test_a_drained_replicas_streams_resume_on_the_other_through_the_balancer(cluster):
    listen, replicas, folder = cluster
    url = f"ws://127.0.0.1:{listen}/v1/stream"
    audio = read_audio(AUDIO)
    reference = read_rttm(str(AUDIO.parent / "reference.rttm"))["dev2a"]

    # Each voice enrolled through the balancer from 15 s of its own turns: registered in
    # Redis, so every replica knows the names.
    samples, rate = sf.read(AUDIO, dtype="float32")
    voices = sorted({voice for *_, voice in reference})
    for voice in voices:
        pieces = [samples[int(s * rate): int(e * rate)] for s, e, v in reference if v == voice]
        body = io.BytesIO()
        sf.write(body, np.concatenate(pieces)[: 15 * rate], rate, format="WAV")
        status, answer = http(listen, f"/v1/voiceprints?name={voice.split('+')[-1]}",
                              body.getvalue(), "POST")
        assert status == 201, answer
    config = {"known_speakers": [{"name": v.split("+")[-1]} for v in voices]}

    async def until_open(wanted, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 60
        while sorted(open_streams(port) for port, _ in replicas) != wanted:
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.05)

    async def body():
        whole = await stream_audio(url, audio, speed=0, config=config)
        # Two clients at 6x real time, one after the other once the first stream has
        # closed: with nothing else open, leastconn gives each replica one.
        await until_open([0, 0], "the first stream did not close")
        clients = [asyncio.create_task(stream_audio(url, audio, speed=6, config=config))]
        await until_open([0, 1], "the first client did not open")
        clients.append(asyncio.create_task(stream_audio(url, audio, speed=6, config=config)))
        await until_open([1, 1], "streams not spread")
        await asyncio.sleep(4.0)  # about 40 % of the audio sent
        drained_port, drained = replicas[0]
        drained.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*clients)
        code = await asyncio.to_thread(drained.wait, 60)
        return whole, results, code

    whole, results, code = asyncio.run(body())
    assert code == 0, (folder / "replica0.log").read_text()[-3000:]
    assert whole[-1]["type"] == "end" and "reconnect" not in whole[-1]
    reference_turns = final_turns(whole)
    # The uninterrupted run names both voices.
    assert {t.get("identity") for t in reference_turns} == {v.split("+")[-1] for v in voices}

    handed_over = [events for events in results if any(e.get("reconnect") for e in events)]
    stayed = [events for events in results if not any(e.get("reconnect") for e in events)]
    assert len(handed_over) == 1 and len(stayed) == 1
    events = handed_over[0]
    readies = [e for e in events if e["type"] == "ready"]
    ends = [e for e in events if e["type"] == "end"]
    assert len(readies) == len(ends) == 2
    cut = ends[0]["position"]
    assert 5.0 < cut < audio.duration - 5.0
    # Resumed from Redis on the other replica: the same id, the speakers of the first
    # part, its clock continuing at the cut.
    assert readies[1]["resume_id"] == readies[0]["resume_id"]
    assert readies[1]["models"] == readies[0]["models"]
    assert readies[1]["offset"] == pytest.approx(cut)
    assert readies[1]["resumed"] == [s["label"] for s in ends[0]["speakers"]]
    turns = final_turns(events)
    after = [t for t in turns if t["start"] >= cut - 1e-6]
    assert after and all(t["start"] >= cut - 1e-6 for t in after)
    assert {t.get("identity") for t in after} >= {v.split("+")[-1] for v in voices} & {
        t.get("identity") for t in reference_turns if t["start"] >= cut}
    # No final turn lost: before and after the hand-over, the labels and identities of
    # the uninterrupted run for at least 95 % of its speech.
    handed, kept = (agreement(turns, reference_turns, audio.duration),
                    agreement(final_turns(stayed[0]), reference_turns, audio.duration))
    print(f"cut at {cut:.2f} s: agreement with the uninterrupted run {handed:.3f} "
          f"(handed over), {kept:.3f} (stayed)")
    assert handed >= 0.95 and kept >= 0.99
    assert ends[-1]["position"] == pytest.approx(whole[-1]["position"], abs=0.05)
