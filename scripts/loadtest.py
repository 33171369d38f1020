#!/usr/bin/env python
"""Load benchmark: N concurrent real-time streams of real speech against one server.

    python scripts/loadtest.py --streams 8,16,32,48

For each N it starts a fresh server (``python -m streamer.server``, so its CPU and memory
are measured apart from this load generator) unless ``--url`` points at a running one,
opens N websocket streams (files from ``../shared/eval/*.wav``, reused round-robin),
paces each at real time in ``--chunk``-second frames (like a microphone: a frame is sent
once its last sample "has been spoken"), with stream starts spread over one step, and
prints per N:

* ``lag`` of final turns. For a final turn ending at ``end`` (stream time), the engine
  needs the audio up to ``end + latency`` to decide it, so its lag is the wall time from
  sending the frame that holds the audio at ``min(end + latency, stream length)`` to
  receiving the final ``turn`` event. It includes waiting for the next step boundary
  (0 to ``step``) and all processing and queueing, but not ``latency`` itself. Turns
  finalised by the end-of-stream flush (received after ``stop``) are left out. The
  limit is ``lag p95 <= --lag-limit`` (1.0 s).
* ``delay``: the server's own share: from sending the frame after which the engine emits
  the final turn (found by feeding the same frames to a local engine, ``--engine-preset``)
  to receiving it. Queueing, compute and network only; the engine's algorithmic wait
  (``latency`` plus step alignment) is not in it.
* ``from_end``: the same from the frame holding the audio at ``end`` (that is, the lag a
  user perceives, ``latency`` included).
* ``1st interim``: from sending the frame that holds the ``start`` of the stream's first
  ``turn`` event (the first speech the server found) to receiving that event. The JSON
  output also has ``first_vs_reference_p50``, measured from the first speech of
  ``reference.rttm`` instead (it then includes speech the models missed).
* server CPU (cores used by the server and every process it started, e.g. the workers of
  ``--processes N``, and per admitted stream), RSS growth per stream (of all of them too),
  warnings, errors, and streams refused at the handshake (HTTP 503: the server's
  admission control).
* where ``nvidia-smi`` runs: GPU utilisation (mean and max) and GPU memory while the
  streams run.

Finally it prints the largest N whose admitted streams keep lag p95 within the limit,
every admitted stream complete and no ``falling_behind`` warning; and, per N, how many
streams were refused.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "eval"
RATE = 16000


@dataclass
class StreamResult:
    lags: list[float] = field(default_factory=list)
    from_end: list[float] = field(default_factory=list)
    first_interim: float | None = None
    first_vs_reference: float | None = None
    delays: list[float] = field(default_factory=list)
    warnings: int = 0
    error: str | None = None
    latency: float = 1.0
    complete: bool = False
    refused: bool = False


@dataclass
class Clip:
    name: str
    frames: list[bytes]
    first_speech: float
    #: turn id -> (stream position at which the engine, fed frame by frame, emits the
    #: final turn, its speaker, its end), from an offline pass; empty when skipped.
    #: (Batched model calls may differ in the last float bits, so the server's turns can
    #: differ; only turns that match are timed.)
    emitted: dict[int, tuple[float, str, float]] = field(default_factory=dict)
    #: Engine-only first-interim delay: emission position - start of the first turn event.
    first_engine: float | None = None
    #: Engine-only lags of the final turns (as ``lag``, with zero compute time).
    engine_lags: list[float] = field(default_factory=list)


def load_clips(paths: list[Path], chunk: float) -> list[Clip]:
    """Each file as s16le frames of ``chunk`` seconds, with its first reference speech."""
    starts = _first_speech(EVAL / "reference.rttm")
    clips = []
    for path in paths:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != RATE:
            raise SystemExit(f"{path}: expected {RATE} Hz audio, got {rate}")
        pcm = (np.clip(audio.mean(axis=1), -1, 32767 / 32768) * 32768).astype("<i2")
        size = int(chunk * RATE)
        frames = [pcm[i:i + size].tobytes() for i in range(0, len(pcm), size)]
        clips.append(Clip(path.stem, frames, starts.get(path.stem, 0.0)))
    return clips


def add_engine_positions(clips: list[Clip], preset: str, chunk: float) -> None:
    """Feed each clip to a local engine frame by frame and note where each final turn is
    emitted, so that the server's own delay can be told apart from the engine's."""
    import torch

    from streamer.engine import StreamingDiarizer
    from streamer.presets import load_frontend

    torch.set_num_threads(1)
    frontend = load_frontend(preset)
    for clip in clips:
        engine = StreamingDiarizer(frontend)
        latency, duration = engine.config.latency, len(clip.frames) * chunk
        for index, frame in enumerate(clip.frames):
            samples = np.frombuffer(frame, "<i2").astype(np.float32) / 32768
            position = (index + 1) * chunk
            for turn in engine.feed(samples):
                if clip.first_engine is None:
                    clip.first_engine = position - turn.start
                if turn.final:
                    clip.emitted[turn.id] = (position, turn.speaker, round(turn.end, 3))
                    closing = min(turn.end + latency, duration)
                    clip.engine_lags.append(position - chunk * np.ceil(closing / chunk - 1e-9))


def _first_speech(rttm: Path) -> dict[str, float]:
    starts: dict[str, float] = {}
    if rttm.exists():
        for line in rttm.read_text().splitlines():
            parts = line.split()
            if len(parts) > 4 and parts[0] == "SPEAKER":
                starts[parts[1]] = min(starts.get(parts[1], 1e9), float(parts[3]))
    return starts


async def run_stream(url: str, clip: Clip, chunk: float, delay: float,
                     timeout: float) -> StreamResult:
    await asyncio.sleep(delay)
    result = StreamResult()
    try:
        async with asyncio.timeout(timeout):
            await _stream(url, clip, chunk, result)
    except InvalidStatus as error:
        result.refused = error.response.status_code == 503
        if not result.refused:
            result.error = f"HTTP {error.response.status_code}"
    except Exception as error:  # noqa: BLE001 - reported in the table
        result.error = f"{type(error).__name__}: {error}"
    return result


async def _stream(url: str, clip: Clip, chunk: float, result: StreamResult) -> None:
    loop = asyncio.get_running_loop()
    async with connect(url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE,
                                  "encoding": "pcm_s16le", "channels": 1}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"no ready: {ready}")
        result.latency = float(ready["config"]["latency"])
        sent = np.full(len(clip.frames), np.nan)
        stopped: list[float] = []
        sender = asyncio.create_task(_send(ws, clip.frames, chunk, sent, stopped))
        async for message in ws:
            now = loop.time()
            event = json.loads(message)
            _record(event, now, sent, stopped, chunk, clip, result)
            if event["type"] in ("end", "error"):
                break
        await sender


async def _send(ws, frames: list[bytes], chunk: float, sent: np.ndarray,
                stopped: list[float]) -> None:
    loop = asyncio.get_running_loop()
    origin = loop.time()
    for index, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, origin + (index + 1) * chunk - loop.time()))
        await ws.send(frame)
        sent[index] = loop.time()
    await ws.send(json.dumps({"type": "stop"}))
    stopped.append(loop.time())


def _sent_at(sent: np.ndarray, seconds: float, chunk: float) -> float:
    """Wall time the frame holding the audio at ``seconds`` was sent."""
    index = min(len(sent) - 1, max(0, int(np.ceil(seconds / chunk - 1e-9)) - 1))
    return float(sent[index])


def _record(event: dict[str, Any], now: float, sent: np.ndarray, stopped: list[float],
            chunk: float, clip: Clip, result: StreamResult) -> None:
    kind = event["type"]
    if kind == "warning":
        result.warnings += 1
    elif kind == "error":
        result.error = f"{event['code']}: {event['message']}"
    elif kind == "end":
        result.complete = True
    elif kind == "turn":
        if result.first_interim is None:
            result.first_interim = now - _sent_at(sent, event["start"], chunk)
            result.first_vs_reference = now - _sent_at(sent, clip.first_speech, chunk)
        if event["final"] and not stopped:
            closing = min(event["end"] + result.latency, len(sent) * chunk)
            result.lags.append(now - _sent_at(sent, closing, chunk))
            result.from_end.append(now - _sent_at(sent, event["end"], chunk))
            emitted = clip.emitted.get(event["id"])
            if emitted is not None and emitted[1:] == (event["speaker"], event["end"]):
                result.delays.append(now - _sent_at(sent, emitted[0], chunk))


class ServerProcess:
    """``python -m streamer.server`` on a free port, with CPU and RSS readings."""

    def __init__(self, extra: list[str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        argv = [sys.executable, "-m", "streamer.server", "--host", "127.0.0.1", "--port",
                str(self.port), "--max-connections", "1000", "--log-level", "WARNING", *extra]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.process = subprocess.Popen(argv, cwd=ROOT, env=env)
        from streamer.server.processes import process_count

        #: Server processes (``--processes N``), counted as the server counts them.
        requested = next((int(value) for flag, value in zip(extra, extra[1:])
                          if flag == "--processes"), 1)
        self.processes = process_count(requested)
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("server did not become healthy")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def cpu_seconds(self) -> float:
        """CPU time of the server and of every process under it (``--processes N``
        workers), the finished children it waited for included."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.process.pid))

    def rss_mb(self) -> float:
        """Resident memory of the server and of every process under it."""
        return sum(_rss_mb(pid) for pid in _tree(self.process.pid))

    def tick_quantiles(self, attempts: int = 200) -> dict[str, float]:
        """p50 and p95 of the scheduler's tick durations over the run, from
        ``/metrics``: under ``--processes N`` each request reaches one worker, so it asks
        until it has every worker's histogram (or gives up after ``attempts``)."""
        histograms: dict[str, dict[float, float]] = {}
        for _ in range(attempts):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                            timeout=5) as reply:
                    text = reply.read().decode()
            except OSError:
                continue
            worker, buckets = "", {}
            for line in text.splitlines():
                match = TICK_BUCKET.match(line)
                if match:
                    worker = match["worker"] or ""
                    bound = float("inf") if match["le"] == "+Inf" else float(match["le"])
                    buckets[bound] = float(match["count"])
            if buckets:
                histograms[worker] = buckets
            if len(histograms) >= self.processes:
                break
        if not histograms:
            return {}
        bounds = sorted(next(iter(histograms.values())))
        cumulative = [sum(h.get(b, 0.0) for h in histograms.values()) for b in bounds]
        return {"tick_p50": _bucket_quantile(bounds, cumulative, 0.5),
                "tick_p95": _bucket_quantile(bounds, cumulative, 0.95),
                "tick_workers": len(histograms)}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


TICK_BUCKET = re.compile(r'^streamer_tick_duration_seconds_bucket\{(?:worker="(?P<worker>[^"]*)",)?'
                         r'le="(?P<le>[^"]+)"\} (?P<count>\S+)$')


def _bucket_quantile(bounds: list[float], cumulative: list[float], q: float) -> float:
    """Quantile ``q`` of a cumulative histogram, linear within a bucket."""
    total = cumulative[-1]
    if total <= 0:
        return float("nan")
    target, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, cumulative):
        if count >= target:
            if bound == float("inf"):
                return lower
            share = (target - below) / max(count - below, 1e-12)
            return lower + share * (bound - lower)
        lower, below = bound, count
    return lower


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (0 once it is gone)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue += children.get(pid, [])
    return found


class GpuSampler:
    """GPU utilisation and memory, sampled by ``nvidia-smi`` every 0.5 s while a level
    runs (nothing where there is no ``nvidia-smi``)."""

    def __init__(self) -> None:
        try:
            self.process: subprocess.Popen | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.process = None

    def stop(self) -> dict[str, float]:
        if self.process is None:
            return {}
        self.process.terminate()
        output, _ = self.process.communicate()
        samples = []
        for line in output.splitlines():
            try:
                samples.append([float(x) for x in line.split(",")[:2]])
            except ValueError:
                continue
        if not samples:
            return {}
        values = np.asarray(samples)
        return {"gpu_util_mean": float(values[:, 0].mean()),
                "gpu_util_max": float(values[:, 0].max()),
                "gpu_memory_max_mb": float(values[:, 1].max())}


async def _sample_rss(server: ServerProcess | None, peak: list[float]) -> None:
    while server is not None:
        peak[0] = max(peak[0], server.rss_mb())
        await asyncio.sleep(0.5)


async def run_level(n: int, clips: list[Clip], args: argparse.Namespace) -> dict[str, Any]:
    server = ServerProcess(args.server_args.split()) if args.url is None else None
    url = args.url or server.url
    try:
        rss0 = server.rss_mb() if server else float("nan")
        cpu0, wall0 = (server.cpu_seconds() if server else 0.0), time.monotonic()
        peak = [rss0]
        sampler = asyncio.create_task(_sample_rss(server, peak))
        gpu = GpuSampler()
        longest = max(len(c.frames) for c in clips) * args.chunk
        streams = [run_stream(url, clips[i % len(clips)], args.chunk,
                              args.spread * i / max(1, n), longest * 3 + 60)
                   for i in range(n)]
        results = await asyncio.gather(*streams)
        ticks = await asyncio.to_thread(server.tick_quantiles) if server else {}
        sampler.cancel()
        gpu_figures = gpu.stop()
        wall = time.monotonic() - wall0
        cpu = (server.cpu_seconds() - cpu0) if server else float("nan")
        return {**summarize(n, results, clips, cpu / wall, (peak[0] - rss0) / n, rss0),
                **gpu_figures, **ticks}
    finally:
        if server is not None:
            server.stop()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(n: int, results: list[StreamResult], clips: list[Clip], cores: float,
              rss_per_stream: float, rss_base: float) -> dict[str, Any]:
    lags = [v for r in results for v in r.lags]
    delays = [v for r in results for v in r.delays]
    reference = [r.first_vs_reference for r in results if r.first_vs_reference is not None]
    engine_first = [clips[i % len(clips)].first_engine for i in range(n)]
    engine_first = [v for v in engine_first if v is not None]
    from_end = [v for r in results for v in r.from_end]
    first = [r.first_interim for r in results if r.first_interim is not None]
    admitted = sum(not r.refused for r in results)
    latency = next((r.latency for r in results if not r.refused), float("nan"))
    return {
        "streams": n, "latency": latency, "final_turns": len(lags),
        "lag_p50": _percentile(lags, 50), "lag_p95": _percentile(lags, 95),
        "lag_max": max(lags, default=float("nan")),
        "from_end_p50": _percentile(from_end, 50), "from_end_p95": _percentile(from_end, 95),
        "delay_p50": _percentile(delays, 50), "delay_p95": _percentile(delays, 95),
        "first_interim_p50": _percentile(first, 50), "first_interim_p95": _percentile(first, 95),
        "first_vs_reference_p50": _percentile(reference, 50),
        "first_interim_engine_p50": _percentile(engine_first, 50),
        "first_interim_engine_p95": _percentile(engine_first, 95),
        "server_cores": cores, "cpu_per_stream": cores / max(1, admitted),
        "admitted": admitted, "refused": n - admitted,
        "rss_base_mb": rss_base, "rss_per_stream_mb": rss_per_stream,
        "complete": sum(r.complete for r in results),
        "warnings": sum(r.warnings for r in results),
        "errors": [r.error for r in results if r.error][:3],
    }


HEADER = ("    N  refused  lag p50  lag p95  lag max  delay p50/p95  from-end p95  "
          "1st interim p50/p95  server cores  CPU/stream  RSS/stream  done  warn")


def format_row(s: dict[str, Any]) -> str:
    return _row(s).replace("nans", " n/a").replace("nan", "n/a")


def _row(s: dict[str, Any]) -> str:
    return (f"{s['streams']:5d}  {s['refused']:7d}  {s['lag_p50']:6.2f}s  {s['lag_p95']:6.2f}s  "
            f"{s['lag_max']:6.2f}s  {s['delay_p50']:5.2f}s/{s['delay_p95']:5.2f}s  "
            f"{s['from_end_p95']:11.2f}s  "
            f"{s['first_interim_p50']:8.2f}s / {s['first_interim_p95']:5.2f}s  "
            f"{s['server_cores']:11.2f}  {100 * s['cpu_per_stream']:8.1f}%  "
            f"{s['rss_per_stream_mb']:7.1f} MB  {s['complete']:4d}  {s['warnings']:4d}")


def passes(s: dict[str, Any], limit: float) -> bool:
    """The admitted streams all complete, none fell behind, lag p95 within ``limit``."""
    return (s["admitted"] > 0 and s["complete"] == s["admitted"] and s["warnings"] == 0
            and s["lag_p95"] <= limit)


async def main_async(args: argparse.Namespace) -> int:
    files = sorted(Path(p) for p in args.files) if args.files else sorted(EVAL.glob("*.wav"))
    if not files:
        raise SystemExit(f"no audio files (looked in {EVAL})")
    clips = load_clips(files, args.chunk)
    if args.engine_preset:
        add_engine_positions(clips, args.engine_preset, args.chunk)
        lags = [v for clip in clips for v in clip.engine_lags]
        firsts = [clip.first_engine for clip in clips if clip.first_engine is not None]
        print(f"engine alone ({args.engine_preset}, frames fed as spoken, no compute time): "
              f"lag p50 {_percentile(lags, 50):.2f} s, p95 {_percentile(lags, 95):.2f} s; "
              f"1st interim p50 {_percentile(firsts, 50):.2f} s, "
              f"p95 {_percentile(firsts, 95):.2f} s", flush=True)
    summaries = []
    print(f"{len(clips)} file(s), chunk {args.chunk} s, server args: "
          f"{args.server_args or '(defaults)'}", flush=True)
    print(HEADER, flush=True)
    for n in args.streams:
        summary = await run_level(n, clips, args)
        summaries.append(summary)
        print(format_row(summary), flush=True)
        if "gpu_util_mean" in summary:
            print(f"       GPU utilisation mean {summary['gpu_util_mean']:.0f} %, max "
                  f"{summary['gpu_util_max']:.0f} %; GPU memory up to "
                  f"{summary['gpu_memory_max_mb']:.0f} MiB", flush=True)
        if "tick_p95" in summary:
            print(f"       scheduler ticks p50 {summary['tick_p50']:.3f} s, p95 "
                  f"{summary['tick_p95']:.3f} s ({summary['tick_workers']} worker(s))",
                  flush=True)
        for error in summary["errors"]:
            print(f"       error: {error}", flush=True)
    good = [s for s in summaries if passes(s, args.lag_limit)]
    best = max(good, key=lambda s: s["admitted"], default=None)
    print(f"most streams admitted at once with lag p95 <= {args.lag_limit} s, all complete, "
          f"no falling_behind: " + (f"{best['admitted']} (of N={best['streams']}, "
                                    f"{best['refused']} refused)" if best else "none"))
    for s in summaries:
        s["passes"] = passes(s, args.lag_limit)
        s["lag_limit"] = args.lag_limit
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv),
                                               "machine": _machine(), "commit": _commit(),
                                               "levels": summaries}, indent=2))
    return 0


def _machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return {"cpus": len(os.sched_getaffinity(0)), "cpu": model,
            "python": sys.version.split()[0], "platform": sys.platform}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="8,16,32,48",
                        type=lambda v: [int(x) for x in v.split(",")],
                        help="comma-separated N values (default %(default)s)")
    parser.add_argument("--url", default=None,
                        help="ws://.../v1/stream of a running server (default: start one "
                             "per N; CPU and RSS are then not measured)")
    parser.add_argument("--server-args", default="",
                        help="extra flags for the started server, e.g. '--preset embedded'")
    parser.add_argument("--files", nargs="*", help="16 kHz wav files (default ../shared/eval)")
    parser.add_argument("--chunk", type=float, default=0.1, help="frame length in seconds")
    parser.add_argument("--spread", type=float, default=0.5,
                        help="stream starts are spread over this many seconds")
    parser.add_argument("--lag-limit", type=float, default=1.0,
                        help="largest lag p95 of a passing N, seconds (default %(default)s)")
    parser.add_argument("--engine-preset", default="embedded",
                        help="preset of the local engine pass that locates where each final "
                             "turn is emitted (for the 'delay' column); must match the "
                             "server's; '' skips it (default %(default)s)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
