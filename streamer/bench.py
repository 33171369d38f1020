"""Per-step compute benchmark: how long one step of one stream takes."""
from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from typing import Callable

import numpy as np

from streamer.errors import AudioFileError
from streamer.models.calls import Models, run_direct

DEFAULT_AUDIO = ("../shared/eval/sample.wav", "shared/eval/sample.wav")


def _audio_path(explicit: str | None) -> str:
    if explicit:
        return explicit
    for candidate in DEFAULT_AUDIO:
        if os.path.exists(candidate):
            return candidate
    raise AudioFileError("no speech file found: pass one with --audio FILE")


def time_steps(frontend, samples: np.ndarray, config, steps: int,
               cpu: list[float] | None = None, models: Models | None = None) -> np.ndarray:
    """Milliseconds of each ``feed`` call that completes one step (audio looped); ``cpu``
    collects the process CPU milliseconds of each. ``models`` replaces the front end's
    models (e.g. to count their calls)."""
    from streamer.engine import StreamingDiarizer

    engine = StreamingDiarizer(frontend, config)
    models = frontend.models if models is None else models
    size = int(round(engine.config.step * engine.sample_rate))
    needed = size * (steps + 1)
    audio = np.tile(samples, needed // len(samples) + 1)[:needed]
    run_direct(engine.feed_steps(audio[:size]), models)  # warm-up step
    timings = []
    for index in range(1, steps + 1):
        chunk = audio[index * size: (index + 1) * size]
        started, started_cpu = time.perf_counter(), time.process_time()
        run_direct(engine.feed_steps(chunk), models)
        timings.append((time.perf_counter() - started) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - started_cpu) * 1000)
    return np.asarray(timings)


def run_step_benchmark(args: argparse.Namespace) -> str:
    from streamer.audio import load_audio
    from streamer.cliargs import config_from_args, frontend_from_args

    path = _audio_path(args.audio)
    samples = load_audio(path)
    frontend = frontend_from_args(args)
    config = config_from_args(args)
    rows: Counter[str] = Counter()
    models = {name: _counting(rows, name, fn) for name, fn in frontend.models.items()}
    cpu: list[float] = []
    timings = time_steps(frontend, samples, config, args.steps, cpu, models)
    step = config.step
    p50, p95 = np.percentile(timings, [50, 95])
    calls = ", ".join(f"{name} {count / (len(timings) + 1):.2f}" for name, count in rows.items())
    report = (f"preset={frontend.name} audio={os.path.basename(path)} steps={len(timings)} "
              f"threads={args.threads} step={step}s\n"
              f"step compute: p50 {p50:.1f} ms, p95 {p95:.1f} ms, mean {timings.mean():.1f} ms "
              f"(real-time factor {timings.mean() / 1000 / step:.3f}; "
              f"{np.mean(cpu) / 1000 / step:.3f} CPU-seconds per second of audio)\n"
              f"model rows per step: {calls or 'none'}")
    if not set(rows) - {"segmentation", "segmentation_responses", "vad"}:
        report += ("\nwarning: the embedding model never ran (no speech found in these steps), "
                   "so these figures leave it out")
    return report


def _counting(rows: Counter[str], name: str, fn: Callable) -> Callable:
    """Wraps a model call to count the rows (chunks or windows) it is given."""
    def call(*args: object, **kwargs: object) -> object:
        if args and isinstance(args[0], np.ndarray) and args[0].ndim:
            rows[name] += args[0].shape[0]
        return fn(*args, **kwargs)
    return call
