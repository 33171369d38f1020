#!/usr/bin/env python
"""Compute capacity of one scheduler: N streams stepped together, no network.

    python scripts/bench_scheduler.py --streams 64,128 [model flags, e.g. --preset accurate]
    python scripts/bench_scheduler.py --streams 256,512,1024 --segmentation SEG \\
        --embedding EMB --device cuda --precision bf16

N engines (one per stream, speech from ``--files``, each starting elsewhere) are fed one
step of audio each per tick, the way the server's :class:`~streamer.scheduler.TickScheduler`
serves N real-time streams whose steps are all due at once. A tick must take less than
one step (0.5 s) for N real-time streams to keep up. Prints, per N, the tick time
(p50/p95 over ``--ticks`` ticks after two warm-up ticks), the largest batch of each model
and its share of the tick time (the rest is the streams' own work, on the CPU),
and the streams one process could serve at that rate (N x step / tick p95); the largest N
whose tick p95 fits in a step is the compute capacity of one server process, before
websocket I/O. ``--json`` writes the figures with the command, machine and commit.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamer.audio import load_audio  # noqa: E402
from streamer.cliargs import (add_model_arguments, add_stream_arguments,  # noqa: E402
                              config_from_args, frontend_from_args)
from streamer.engine import StreamingDiarizer  # noqa: E402
from streamer.models.calls import run_together  # noqa: E402


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _device_name(device: str) -> str:
    if device != "cpu":
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def measure(frontend, config, speech: np.ndarray, streams: int, ticks: int,
            max_batch: int) -> dict:
    engines = [StreamingDiarizer(frontend, config) for _ in range(streams)]
    step = int(round(engines[0].config.step * engines[0].sample_rate))
    starts = [(index * 7919 * step // 16) % (len(speech) - step) for index in range(streams)]
    largest: dict[str, int] = collections.Counter()
    model_seconds: dict[str, float] = collections.Counter()
    timed = [False]

    def observe(name: str, jobs: int, rows: int, seconds: float) -> None:
        largest[name] = max(largest[name], rows)
        if timed[0]:
            model_seconds[name] += seconds

    times = []
    for tick in range(ticks + 2):
        jobs = []
        for engine, start in zip(engines, starts):
            offset = (start + tick * step) % (len(speech) - step)
            jobs.append(engine.feed_steps(speech[offset:offset + step]))
        timed[0] = tick >= 2
        begun = time.perf_counter()
        for outcome in run_together(jobs, frontend.models, max_batch=max_batch,
                                    on_batch=observe):
            outcome.result()
        if tick >= 2:
            times.append(time.perf_counter() - begun)
    p50, p95 = (float(x) for x in np.percentile(times, [50, 95]))
    seconds = step / engines[0].sample_rate
    return {"streams": streams, "tick_p50": round(p50, 4), "tick_p95": round(p95, 4),
            "real_time": p95 <= seconds, "streams_per_process": int(streams * seconds / p95),
            "largest_batch": dict(largest),
            "model_share": {name: round(total / sum(times), 3)
                            for name, total in model_seconds.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser)
    add_stream_arguments(parser)
    parser.add_argument("--streams", default="16,32,64", help="comma-separated N values")
    parser.add_argument("--ticks", type=int, default=20, help="timed ticks per N")
    parser.add_argument("--max-batch", type=int, default=64, help="rows per forward pass")
    parser.add_argument("--files", nargs="*",
                        default=sorted(str(p) for p in (ROOT.parent / "shared" / "eval")
                                       .glob("*.wav")), help="speech files")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if not args.files:
        parser.error("no speech files: pass --files")
    frontend = frontend_from_args(args)
    config = config_from_args(args)
    speech = np.concatenate([load_audio(path) for path in args.files])
    print(f"preset {frontend.name}, device {args.device} ({_device_name(args.device)}), "
          f"precision {args.precision}, max batch {args.max_batch}, {args.ticks} ticks")
    print(f"{'N':>6}{'tick p50':>10}{'tick p95':>10}{'real time':>11}{'N per process':>15}"
          "  largest batch (rows); share of the tick in each model")
    results = []
    for streams in (int(n) for n in args.streams.split(",")):
        result = measure(frontend, config, speech, streams, args.ticks, args.max_batch)
        results.append(result)
        batches = ", ".join(f"{k} {v} ({100 * result['model_share'].get(k, 0):.0f} %)"
                            for k, v in result["largest_batch"].items())
        print(f"{streams:>6}{result['tick_p50']:>9.3f}s{result['tick_p95']:>9.3f}s"
              f"{'yes' if result['real_time'] else 'no':>11}{result['streams_per_process']:>15}"
              f"  {batches}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
            "machine": {"device": _device_name(args.device), "cpus": os.cpu_count(),
                        "platform": platform.platform()},
            "commit": _commit(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
