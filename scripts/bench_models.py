#!/usr/bin/env python
"""CPU speed of the pyannote models: milliseconds per 10 s chunk (median over repeats).

    python scripts/bench_models.py                      # ../shared/parity checkpoints, 1 thread
    python scripts/bench_models.py --threads 2 --repeats 20
    python scripts/bench_models.py --model seg=pyannote/segmentation-3.0 --backends torch

Rows: one segmentation chunk; one embedding of a chunk (with weights); and the front end's
real call for an embedding model, the same chunk once per local speaker (3 rows, distinct
weights), which runs the trunk once.

On a GPU machine:

    python scripts/bench_models.py --device cuda --compare-cpu --batches 1,32,256

also prints the largest difference between the GPU and CPU outputs for one chunk (and to
``reference.npz`` when the model folder has one) and the throughput in chunks per second
for batches of distinct 10 s chunks.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from streamer.models.pyannote import load_embedding, load_segmentation  # noqa: E402

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
DEFAULT_MODELS = {
    "segmentation-3.0": ("seg", PARITY / "segmentation-3.0"),
    "segmentation-2": ("seg", PARITY / "segmentation-2"),
    "wespeaker-resnet34": ("emb", PARITY / "wespeaker-resnet34"),
    "xvector-sincnet": ("emb", PARITY / "xvector-sincnet"),
}


def median_ms(call: Callable[[], object], repeats: int,
              warmup: int = 2) -> tuple[float, float, float]:
    """Median wall-clock, median CPU (process) and fastest wall-clock milliseconds per call.

    CPU time is what one call costs the machine; on a busy machine wall-clock also counts
    time spent waiting for a core, CPU time does not. The fastest run approximates a quiet
    machine.
    """
    for _ in range(warmup):
        call()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu), min(wall)


def speech(seconds: float, batch: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    voice = np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (0.1 * voice + 0.01 * rng.standard_normal((batch, t.size))).astype(np.float32)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare_cpu(name: str, kind: str, source: Path | str, device: str) -> None:
    """Largest |device - cpu| output difference on one 10 s chunk (and vs reference.npz)."""
    reference = Path(source) / "reference.npz"
    ref = dict(np.load(reference)) if reference.is_file() else {}
    chunk = ref["input"][:, 0] if "input" in ref else speech(10.0)
    loader = load_segmentation if kind == "seg" else load_embedding
    cpu, gpu = loader(source), loader(source, device=device)
    if kind == "seg":
        out_cpu, out_gpu = cpu.raw(chunk), gpu.raw(chunk)
        expected = ref.get("output")
    else:
        weights = ref.get("weights")
        out_cpu, out_gpu = cpu(chunk, weights), gpu(chunk, weights)
        expected = ref.get("output") if weights is not None else None
    line = (f"{name:<22}max|{device}-cpu| = {np.abs(out_gpu - out_cpu).max():.2e} "
            f"(output scale {np.abs(out_cpu).max():.2f})")
    if expected is not None:
        line += f", max|{device}-reference| = {np.abs(out_gpu - expected).max():.2e}"
    print(line, flush=True)


def throughput(name: str, kind: str, source: Path | str, device: str, backend: str,
               batches: list[int], repeats: int, tf32: bool) -> None:
    """Chunks per second for batches of distinct 10 s chunks."""
    model = (load_segmentation if kind == "seg" else load_embedding)(
        source, device=device, backend=backend)
    model.allow_tf32 = tf32
    if kind == "emb":
        model.max_batch = max(batches)
    for batch in batches:
        chunks = speech(10.0, batch)  # distinct rows: no shared trunk pass
        call = (lambda: model(chunks)) if kind == "seg" else (
            lambda: model(chunks, np.ones((batch, 589), np.float32)))
        try:
            wall, _, _ = median_ms(lambda: (call(), _sync(device)), max(3, repeats // batch))
        except RuntimeError as error:  # e.g. out of memory
            print(f"{name:<22}{backend:<8}batch {batch:<5} failed: {str(error)[:60]}")
            continue
        print(f"{name:<22}{backend:<8}batch {batch:<5}{batch / wall * 1000:>10.1f} chunks/s"
              f"{wall:>10.1f} ms/batch", flush=True)


def parse_models(items: list[str]) -> dict[str, tuple[str, Path | str]]:
    if not items:
        return DEFAULT_MODELS
    models = {}
    for item in items:
        kind, _, source = item.partition("=")
        if kind not in ("seg", "emb") or not source:
            raise SystemExit(f"--model takes seg=SOURCE or emb=SOURCE, got {item!r}")
        models[Path(source).name or source] = (kind, source)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[],
                        help="seg=SOURCE or emb=SOURCE (repeatable; default: ../shared/parity)")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compare-cpu", action="store_true",
                        help="compare --device outputs with CPU outputs on one chunk")
    parser.add_argument("--batches", default="",
                        help="comma-separated batch sizes for a throughput test, e.g. 1,32,256")
    parser.add_argument("--tf32", action="store_true",
                        help="let cuDNN use TF32 in the throughput test (faster, less exact)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    chunk = speech(10.0)
    models = parse_models(args.model)
    if args.compare_cpu:
        for name, (kind, source) in models.items():
            compare_cpu(name, kind, source, args.device)
    if args.batches:
        sizes = [int(b) for b in args.batches.split(",")]
        for name, (kind, source) in models.items():
            for backend in args.backends.split(","):
                throughput(name, kind, source, args.device, backend, sizes, args.repeats,
                           args.tf32)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, "
          f"median of {args.repeats} runs, ms per 10 s chunk\n(p50: median wall-clock, cpu: median process CPU time, min: fastest run)")
    print(f"{'model':<22}{'backend':<8}{'call':<36}{'p50 ms':>9}{'cpu ms':>9}{'min ms':>9}")
    for name, (kind, source) in models.items():
        for backend in args.backends.split(","):
            try:
                if kind == "seg":
                    model = load_segmentation(source, backend=backend, device=args.device)
                    rows = {"segmentation (1 chunk)": lambda: model(chunk)}
                else:
                    model = load_embedding(source, backend=backend, device=args.device)
                    weights = np.random.default_rng(1).uniform(0, 1, (3, 589)).astype(np.float32)
                    three = np.repeat(chunk, 3, axis=0)
                    rows = {"embedding (1 chunk, weighted)": lambda: model(chunk, weights[:1]),
                            "embedding (3 speakers, same chunk)": lambda: model(three, weights)}
            except Exception as error:  # report and go on with the other rows
                print(f"{name:<22}{backend:<8}{'load failed: ' + str(error)[:60]}")
                continue
            for label, call in rows.items():
                wall, cpu, fastest = median_ms(call, args.repeats)
                print(f"{name:<22}{backend:<8}{label:<36}{wall:>9.1f}{cpu:>9.1f}{fastest:>9.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
