"""Per-step compute benchmark: how long one step of one stream takes."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from streamer.errors import AudioFileError

DEFAULT_AUDIO = ("../shared/eval/sample.wav", "shared/eval/sample.wav")


def _audio_path(explicit: str | None) -> str:
    if explicit:
        return explicit
    for candidate in DEFAULT_AUDIO:
        if os.path.exists(candidate):
            return candidate
    raise AudioFileError("no speech file found: pass one with --audio FILE")


def time_steps(frontend, samples: np.ndarray, config, steps: int) -> np.ndarray:
    """Milliseconds of each ``feed`` call that completes one step (audio looped)."""
    from streamer.engine import StreamingDiarizer

    engine = StreamingDiarizer(frontend, config)
    size = int(round(engine.config.step * engine.sample_rate))
    needed = size * (steps + 1)
    audio = np.tile(samples, needed // len(samples) + 1)[:needed]
    engine.feed(audio[:size])  # warm-up step
    timings = []
    for index in range(1, steps + 1):
        chunk = audio[index * size: (index + 1) * size]
        started = time.perf_counter()
        engine.feed(chunk)
        timings.append((time.perf_counter() - started) * 1000)
    return np.asarray(timings)


def run_step_benchmark(args: argparse.Namespace) -> str:
    from streamer.audio import load_audio
    from streamer.cliargs import config_from_args, frontend_from_args

    path = _audio_path(args.audio)
    samples = load_audio(path)
    frontend = frontend_from_args(args)
    config = config_from_args(args)
    timings = time_steps(frontend, samples, config, args.steps)
    step = config.step
    p50, p95 = np.percentile(timings, [50, 95])
    return (f"preset={frontend.name} audio={os.path.basename(path)} steps={len(timings)} "
            f"threads={args.threads} step={step}s\n"
            f"step compute: p50 {p50:.1f} ms, p95 {p95:.1f} ms, mean {timings.mean():.1f} ms "
            f"(real-time factor {timings.mean() / 1000 / step:.3f})")
