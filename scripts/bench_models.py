#!/usr/bin/env python
"""CPU speed of the pyannote models: milliseconds per 10 s chunk (median over repeats).

    python scripts/bench_models.py                      # ../shared/parity checkpoints, 1 thread
    python scripts/bench_models.py --threads 2 --repeats 20
    python scripts/bench_models.py --model seg=hf:pyannote/segmentation-3.0 --backends torch

Rows: one segmentation chunk; one streaming step of segmentation (the buffer moved by
0.5 s: the sinc filterbank's work of the previous step is reused); the same network computed
as pyannote.audio's module computes it (sinc filters rebuilt on every call, conv1d on the
normalised audio), a same-machine reference for the ratio; one embedding of a chunk (with
weights); and the front end's real call for an embedding model, the same chunk once per
local speaker (3 rows, distinct weights), which runs the trunk once.

The whole streaming pipeline (segmentation + embedding, engine included), in CPU-seconds
per second of audio:

    python scripts/bench_models.py --pipeline --steps 60

The checkpoints of ../shared/parity have random weights, under which the segmentation finds
no speech and no embedding would ever be computed. The network still runs, but its output
is replaced: ``--activity all`` (default) marks ``--active N`` (default 2) local speakers
active in every frame, the costliest case (every step embeds the whole buffer);
``--activity reference`` marks the speakers of sample.wav's reference turns, frame by
frame, as a trained segmentation would (sample.wav looped: 0.5-2 s turns with pauses).

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
from functools import partial
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from streamer.models.pyannote import load_embedding, load_segmentation  # noqa: E402

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
RECIPE = "pyannote.audio's recipe (torch)"
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


def in_turns(calls: dict[str, Callable[[], object]], repeats: int,
             warmup: int = 2) -> dict[str, tuple[float, float, float]]:
    """:func:`median_ms` of several calls run in turns, so that a busy spell of a shared
    machine slows them all alike and their ratios stay fair."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    wall: dict[str, list[float]] = {label: [] for label in calls}
    cpu: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(repeats):
        for label, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            wall[label].append((time.perf_counter() - start) * 1000)
            cpu[label].append((time.process_time() - start_cpu) * 1000)
    return {label: (statistics.median(wall[label]), statistics.median(cpu[label]),
                    min(wall[label])) for label in calls}


def speech(seconds: float, batch: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16000)) / 16000
    voice = np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (0.1 * voice + 0.01 * rng.standard_normal((batch, t.size))).astype(np.float32)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def streaming_step(model, chunk_seconds: float) -> Callable[[], object]:
    """One step of a rolling buffer moving by 0.5 s, reusing the filterbank's work."""
    size, hop = round(chunk_seconds * 16000), 8000
    audio = speech(chunk_seconds + 60.0)[0]
    cache = model.response_cache()
    position = [0]

    def step() -> object:
        start = position[0] = (position[0] + hop) % (audio.size - size)
        inputs = cache.update(audio[start:start + size], start)
        return model.from_responses(*(x[None] for x in inputs))
    return step


def reference_recipe(source: Path | str) -> Callable[[np.ndarray], object]:
    """The network computed the way pyannote.audio's module does it: the sinc filters
    rebuilt from their parameters on every call and applied with conv1d to the normalised
    audio; the same LSTM and linear layers."""
    import torch.nn.functional as F

    from streamer.models.pyannote.checkpoint import read_checkpoint
    from streamer.models.pyannote.pyannet import build_pyannet

    path = Path(source)
    model, _, _ = build_pyannet(read_checkpoint(path / "pytorch_model.bin" if path.is_dir()
                                                else path))
    sincnet = model.sincnet

    def sincnet_forward(waveforms: torch.Tensor) -> torch.Tensor:
        filters = sincnet.conv1d[0].filterbank.filters()
        outputs = F.conv1d(sincnet.wav_norm1d(waveforms), filters, stride=sincnet.stride)
        return sincnet._after_filters(outputs.abs())

    sincnet.forward = sincnet_forward

    def run(chunk: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(chunk)[:, None])
    return run


class ActiveSpeakers:
    """Runs the segmentation network, then reports local speakers as active: the first
    ``active`` ones in every frame, or, given reference ``turns`` of the streamed audio
    (looped), the reference speakers of each frame (an oracle segmentation)."""

    def __init__(self, model, active: int, turns: list | None = None,
                 duration: float = 0.0) -> None:
        self.model, self.active, self.turns, self.duration = model, active, turns, duration
        self.reuses_filter_responses = model.reuses_filter_responses
        self.start = 0.0  # stream time of the buffer being analysed (set by the stream)

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _forced(self, activations: np.ndarray) -> np.ndarray:
        forced = np.zeros_like(activations)
        if self.turns is None:
            forced[..., :self.active] = 1.0
            return forced
        step = self.model.frames.step
        stream = self.start + (np.arange(activations.shape[-2]) + 0.5) * step
        times = np.where(stream >= 0, stream % self.duration, -1.0)  # < 0: left padding
        slots: dict[str, int] = {}
        for start, end, speaker in self.turns:
            inside = (times >= start) & (times < end)
            if inside.any() and len(slots) < activations.shape[-1]:
                forced[..., inside, slots.setdefault(speaker, len(slots))] = 1.0
        return forced

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        return self._forced(self.model(waveforms))

    def from_responses(self, *inputs: np.ndarray) -> np.ndarray:
        return self._forced(self.model.from_responses(*inputs))


def _tracking_streams(frontend, segmentation: ActiveSpeakers) -> None:
    """Let ``segmentation`` know the stream time of each buffer its front end analyses."""
    make = frontend.stream

    class Stream:
        def __init__(self, config) -> None:
            self.inner = make(config)

        def analyze(self, buffer: np.ndarray, start: float, speakers=None):
            segmentation.start = start
            return self.inner.analyze(buffer, start, speakers)

    frontend.stream = Stream


def pipeline(models: dict[str, tuple[str, Path | str]], backends: list[str],
             precisions: list[str], steps: int, active: int, activity: str) -> None:
    """CPU-seconds per second of audio of the streaming pipeline, per backend."""
    from streamer.bench import time_steps
    from streamer.config import StreamConfig
    from streamer.models.frontend import SegmentationEmbeddingFrontend

    sources = {kind: source for kind, source in models.values()}
    if set(sources) != {"seg", "emb"}:
        raise SystemExit("--pipeline needs one seg= and one emb= model")
    audio = speech(30.0)[0]
    sample = PARITY.parent / "eval" / "sample.wav"
    turns = None
    if sample.is_file():
        from streamer.audio import load_audio
        audio = load_audio(str(sample))
        if activity == "reference":
            from streamer.rttm import read_rttm
            turns = read_rttm(sample.parent / "reference.rttm")["sample"]
    elif activity == "reference":
        raise SystemExit(f"--activity reference needs {sample} and its reference.rttm")
    what = (f"{active} local speaker(s) active in every frame" if turns is None else
            f"the reference speakers of {sample.name} active (an oracle segmentation)")
    print(f"streaming pipeline, {steps} steps of 0.5 s, {what}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'backend':<8}{'precision':<11}{'filterbank':<12}{'p50 ms':>9}{'mean ms':>9}"
          f"{'CPU-s per audio s':>20}{'embeddings/step':>17}")
    segmentations: dict[str, object] = {}
    for backend in backends:
        for precision in precisions:
            if precision != "fp32" and backend != "torch":
                continue
            if backend not in segmentations:
                segmentations[backend] = load_segmentation(sources["seg"], backend=backend)
            segmentation = segmentations[backend]
            embedding = load_embedding(sources["emb"], backend=backend, precision=precision)
            calls: list[int] = []
            embed = embedding.__call__
            for reuse in (False, True):
                oracle = ActiveSpeakers(segmentation, active, turns, len(audio) / 16000)
                frontend = SegmentationEmbeddingFrontend(oracle, embedding)
                _tracking_streams(frontend, oracle)
                frontend.reuse_responses = reuse
                models = {**frontend.models, "embedding": lambda chunks, weights=None: (
                    calls.append(len(chunks)), embed(chunks, weights))[1]}
                calls.clear()
                cpu: list[float] = []
                timings = time_steps(frontend, audio, StreamConfig(), steps, cpu, models)
                print(f"{backend:<8}{precision:<11}{'reused' if reuse else 'full':<12}"
                      f"{np.percentile(timings, 50):>9.1f}{timings.mean():>9.1f}"
                      f"{np.mean(cpu) / 1000 / 0.5:>20.3f}{sum(calls) / (steps + 1):>17.2f}",
                      flush=True)


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


def compiled(model, kind: str, mode: str) -> None:
    """Run ``model``'s torch network through ``torch.compile(mode=mode)`` from now on
    (``reduce-overhead`` replays CUDA graphs). The first batch size compiles a static
    graph, the second one a graph with a dynamic batch size that serves all others."""
    from streamer.models.pyannote.device import torch_runner

    if kind == "seg":
        network = torch.compile(model.network, mode=mode)
        function = lambda x: network(x.unsqueeze(1))  # noqa: E731 - as the loader's runner
    else:
        function = torch.compile(model._module.trunk, mode=mode)
    model._run = torch_runner(function, model.device)


def varied(name: str, source: Path | str, device: str, precision: str, calls: int,
           seconds: float, fixed: bool) -> None:
    """Embedding throughput over ``calls`` calls of 1 to ``max_batch`` distinct chunks each,
    sizes drawn at random as a server's ticks make them, and the GPU memory it takes;
    ``fixed=False`` turns off the fixed shapes of fp32 GPU passes, for comparison."""
    model = load_embedding(source, device=device, precision=precision)
    model.fixed_gpu_shapes = fixed
    rng = np.random.default_rng(0)
    pool = speech(seconds, model.max_batch)
    sizes = rng.integers(1, model.max_batch + 1, calls)
    for size in range(1, model.max_batch + 1):  # every shape once before timing
        model(pool[:size])
    _sync(device)
    start, rows = time.perf_counter(), 0
    for index, size in enumerate(sizes):
        model(pool[:size] * (1.0 + 1e-3 * index))
        rows += int(size)
    _sync(device)
    wall = time.perf_counter() - start
    memory = (f"; GPU memory reserved up to {torch.cuda.max_memory_reserved() / 2 ** 30:.1f} GiB"
              if device.startswith("cuda") else "")
    print(f"{name:<22}{precision:<6}{'fixed shapes' if model.fixed_shapes else 'any shape':<14}"
          f"{rows / wall:>8.1f} chunks/s over {calls} calls of 1-{model.max_batch} "
          f"{seconds:g} s chunks{memory}", flush=True)


def throughput(name: str, kind: str, source: Path | str, device: str, backend: str,
               batches: list[int], repeats: int, tf32: bool, precision: str = "fp32",
               compile_mode: str = "") -> None:
    """Chunks per second for batches of distinct 10 s chunks."""
    if kind == "seg":
        model = load_segmentation(source, device=device, backend=backend)
    else:
        model = load_embedding(source, device=device, backend=backend, precision=precision)
    model.allow_tf32 = tf32
    if compile_mode:
        compiled(model, kind, compile_mode)
    if kind == "emb":
        model.max_batch = max(batches)
    for batch in batches:
        chunks = speech(10.0, batch)  # distinct rows: no shared trunk pass
        call = (lambda: model(chunks)) if kind == "seg" else (
            lambda: model(chunks, np.ones((batch, 589), np.float32)))
        try:
            first = time.perf_counter()
            call()
            _sync(device)
            first = time.perf_counter() - first  # compiles a compiled model's new shape
            wall, _, _ = median_ms(lambda: (call(), _sync(device)), max(3, repeats // batch))
        except RuntimeError as error:  # e.g. out of memory
            print(f"{name:<22}{backend:<8}batch {batch:<5} failed: {str(error)[:60]}")
            continue
        label = f"{backend}/{precision}" if kind == "emb" else backend
        label += f"/{compile_mode}" if compile_mode else ""
        print(f"{name:<22}{label:<28}batch {batch:<5}{batch / wall * 1000:>10.1f} chunks/s"
              f"{wall:>10.1f} ms/batch  (first call {first:.1f} s)", flush=True)


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
    parser.add_argument("--compile", default="",
                        help="comma-separated torch.compile modes for the throughput test, "
                             "next to eager ('eager,default,reduce-overhead': the last "
                             "replays CUDA graphs)")
    parser.add_argument("--varied", type=int, default=0, metavar="CALLS",
                        help="embedding throughput over CALLS calls of random batch sizes "
                             "(1 to 32 chunks of --varied-seconds), as a server makes them")
    parser.add_argument("--varied-seconds", type=float, default=5.0)
    parser.add_argument("--any-shape", action="store_true",
                        help="--varied without the fixed shapes of fp32 GPU passes")
    parser.add_argument("--pipeline", action="store_true",
                        help="time the whole streaming pipeline (needs one seg= and one emb=)")
    parser.add_argument("--steps", type=int, default=60, help="steps for --pipeline")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="embedding precisions for --pipeline and --batches "
                             "(bf16: torch backend, ResNet only)")
    parser.add_argument("--activity", default="all", choices=["all", "reference"],
                        help="--pipeline: 'all' marks --active local speakers active in "
                             "every frame; 'reference' follows the reference turns of "
                             "sample.wav (an oracle segmentation)")
    parser.add_argument("--active", type=int, default=2,
                        help="local speakers marked active in every frame for --pipeline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    chunk = speech(10.0)
    if args.pipeline:
        models = parse_models(args.model or [
            f"seg={PARITY / 'segmentation-3.0'}", f"emb={PARITY / 'wespeaker-resnet34'}"])
        pipeline(models, args.backends.split(","), args.precisions.split(","), args.steps,
                 args.active, args.activity)
        return
    models = parse_models(args.model)
    if args.varied:
        for name, (kind, source) in models.items():
            for precision in args.precisions.split(","):
                if kind == "emb":
                    varied(name, source, args.device, precision, args.varied,
                           args.varied_seconds, not args.any_shape)
        return
    if args.compare_cpu:
        for name, (kind, source) in models.items():
            compare_cpu(name, kind, source, args.device)
    if args.batches:
        sizes = [int(b) for b in args.batches.split(",")]
        for name, (kind, source) in models.items():
            for backend in args.backends.split(","):
                for precision in args.precisions.split(","):
                    if precision != "fp32" and (kind == "seg" or backend != "torch"
                                                or "xvector" in name):
                        continue
                    for mode in (args.compile or "eager").split(","):
                        throughput(name, kind, source, args.device, backend, sizes,
                                   args.repeats, args.tf32, precision,
                                   "" if mode == "eager" else mode)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}, "
          f"median of {args.repeats} runs, ms per chunk (10 s; 5 s for segmentation 2.x)\n"
          "(p50: median wall-clock, cpu: median process CPU time, min: fastest run; the rows "
          "of one model and backend run in turns;\n x recipe: how many times faster than "
          "pyannote.audio's recipe, p50 against p50)")
    print(f"{'model':<22}{'backend':<8}{'call':<36}{'p50 ms':>9}{'cpu ms':>9}{'min ms':>9}"
          f"{'x recipe':>10}")
    for name, (kind, source) in models.items():
        for backend in args.backends.split(","):
            try:
                if kind == "seg":
                    model = load_segmentation(source, backend=backend, device=args.device)
                    own = speech(model.chunk_duration)  # 10 s (5 s for segmentation 2.x)
                    rows = {"segmentation (1 chunk)": partial(model, own)}
                    if model.reuses_filter_responses:
                        rows["segmentation (streaming step)"] = streaming_step(
                            model, model.chunk_duration)
                    if args.device == "cpu":
                        rows[RECIPE] = partial(reference_recipe(source), own)
                else:
                    model = load_embedding(source, backend=backend, device=args.device)
                    weights = np.random.default_rng(1).uniform(0, 1, (3, 589)).astype(np.float32)
                    three = np.repeat(chunk, 3, axis=0)
                    rows = {"embedding (1 chunk, weighted)": lambda: model(chunk, weights[:1]),
                            "embedding (3 speakers, same chunk)": lambda: model(three, weights)}
            except Exception as error:  # report and go on with the other rows
                print(f"{name:<22}{backend:<8}{'load failed: ' + str(error)[:60]}")
                continue
            results = in_turns(rows, args.repeats)
            recipe = results.get(RECIPE, (0.0,))[0]
            for label, (wall, cpu, fastest) in results.items():
                ratio = f"{recipe / wall:>10.2f}" if recipe and label != RECIPE else ""
                print(f"{name:<22}{backend:<8}{label:<36}{wall:>9.1f}{cpu:>9.1f}{fastest:>9.1f}"
                      f"{ratio}", flush=True)


if __name__ == "__main__":
    main()
