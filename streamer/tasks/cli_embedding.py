"""``streamer embed`` and ``streamer compare``: speaker embeddings of files, saved and
compared (the library is :mod:`streamer.tasks.embedding`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from streamer.cliargs import (add_model_arguments, embedding_from_args, emptied, open_outputs,
                              preset_of)
from streamer.errors import ConfigError

OUTPUT_SUFFIXES = (".json", ".npy")


def add_commands(commands: Any) -> None:
    """Add ``embed`` and ``compare`` to the ``streamer`` parser."""
    embed = commands.add_parser(
        "embed", help="speaker embedding of an audio file, an excerpt or a sliding window",
        description="Speaker embedding (L2-normalised) of a whole file, of its excerpt "
                    "[--start, --end), or of a sliding window (--window, --step). Without "
                    "--out, a single embedding is printed as a JSON list and sliding "
                    "windows as one line each: start, end, cosine distance to the "
                    "previous window.")
    embed.add_argument("audio", help="wav/flac/ogg (any rate, any channels); mp3/m4a/... "
                                     "need ffmpeg")
    embed.add_argument("--start", type=float, default=None, metavar="S",
                       help="start of the excerpt, seconds (default: the beginning)")
    embed.add_argument("--end", type=float, default=None, metavar="E",
                       help="end of the excerpt, seconds (default: the end)")
    embed.add_argument("--window", type=float, default=None, metavar="W",
                       help="embed a sliding window of W seconds instead (pyannote's "
                            "window=\"sliding\"; e.g. 3)")
    embed.add_argument("--step", type=float, default=None, metavar="S",
                       help="seconds between windows (default: 10%% of --window)")
    embed.add_argument("--out", metavar="FILE", default=None,
                       help="write FILE.json (the embedding with its model, audio and "
                            "excerpt; comparable with 'streamer compare') or FILE.npy "
                            "(the numbers only: (dim,) or (windows, dim) with NaN rows)")
    add_model_arguments(embed)
    embed.set_defaults(run=_run_embed)

    compare = commands.add_parser(
        "compare", help="cosine distance between the speakers of two files",
        description="Cosine distance (0: same direction, 2: opposite) between the "
                    "embeddings of A and B: audio files, embedded with the model flags, or "
                    "JSON files written by 'streamer embed --out'. Embeddings of different "
                    "models are refused.")
    compare.add_argument("a", metavar="A", help="audio file or saved embedding (.json)")
    compare.add_argument("b", metavar="B", help="audio file or saved embedding (.json)")
    compare.add_argument("--json", action="store_true",
                         help="print one JSON line: inputs, model and distance")
    add_model_arguments(compare)
    compare.set_defaults(run=_run_compare)


def _load_model(args: argparse.Namespace) -> Any:
    """The embedded preset's front end, or for pyannote the embedding model alone."""
    from streamer.tasks.embedding import EmbeddingFrontend

    model, source = embedding_from_args(args)
    return model if preset_of(args) == "embedded" else EmbeddingFrontend(model, source)


# ---------------------------------------------------------------------------- embed
def _run_embed(args: argparse.Namespace) -> int:
    from streamer.audio import AudioFile, load_audio
    from streamer.tasks.embedding import check_window, excerpt_bounds

    step = _sliding_step(args)
    if args.window is not None:
        check_window(args.window, step)
    if args.out and not args.out.lower().endswith(OUTPUT_SUFFIXES):
        raise ConfigError(f"--out {args.out}: the name must end in .json or .npy")
    with AudioFile(args.audio) as audio:  # fails fast on a bad file, before loading models
        if audio.expected_samples:
            excerpt_bounds(audio.expected_samples, args.start, args.end)
        with open_outputs({"--out": args.out}) as outputs:
            frontend = _load_model(args)
            samples = load_audio(args.audio)
            if args.window is None:
                _embed_whole(args, frontend, samples, outputs.get("--out"))
            else:
                _embed_windows(args, step, frontend, samples, outputs.get("--out"))
    return 0


def _sliding_step(args: argparse.Namespace) -> float | None:
    if args.window is None:
        if args.step is not None:
            raise ConfigError("--step goes with --window (the sliding window's length)")
        return None
    return args.step if args.step is not None else 0.1 * args.window


def _embed_whole(args: argparse.Namespace, frontend: Any, samples: np.ndarray,
                 out: Any) -> None:
    from streamer.tasks.embedding import (embed, embedding_document, json_floats,
                                          model_identity)

    vector = embed(frontend, samples, start=args.start, end=args.end)
    start, end = _excerpt_seconds(args, len(samples))
    if out is None:
        print(json.dumps(json_floats(vector)))
        return
    document = embedding_document(model_identity(frontend), args.audio, start, end, vector)
    _write(out, args.out, document, vector)
    print(f"streamer: {len(vector)}-d embedding of {end - start:.1f} s written to "
          f"{args.out}", file=sys.stderr)


def _embed_windows(args: argparse.Namespace, step: float, frontend: Any,
                   samples: np.ndarray, out: Any) -> None:
    from streamer.tasks.embedding import embed_sliding, model_identity, sliding_document

    segments, rows = embed_sliding(frontend, samples, window=args.window, step=step,
                                   start=args.start, end=args.end)
    missing = int((~np.isfinite(rows).all(axis=1)).sum())
    if out is None:
        for line in _window_lines(segments, rows):
            print(line)
    else:
        start, end = _excerpt_seconds(args, len(samples))
        document = sliding_document(model_identity(frontend), args.audio, start, end,
                                    args.window, step, segments, rows)
        _write(out, args.out, document, rows)
    print(f"streamer: {len(rows)} windows of {args.window:g} s every {step:g} s"
          + (f", {missing} without an embedding (too short or too little speech: NaN)"
             if missing else "") + (f", written to {args.out}" if out else ""),
          file=sys.stderr)


def _window_lines(segments: np.ndarray, rows: np.ndarray) -> list[str]:
    """``start end distance``: the cosine distance to the previous window ('-' when either
    has no embedding), which rises where the speaker changes."""
    from streamer.tasks.embedding import cosine_distance

    lines, previous = [], None
    for (start, end), row in zip(segments, rows):
        current = row if np.isfinite(row).all() else None
        distance = ("-" if current is None or previous is None
                    else f"{cosine_distance(previous, current):.4f}")
        lines.append(f"{start:9.3f} {end:9.3f} {distance:>7s}"
                     + ("" if current is not None else "  (no embedding)"))
        previous = current
    return lines


def _excerpt_seconds(args: argparse.Namespace, num_samples: int) -> tuple[float, float]:
    from streamer.tasks.embedding import SAMPLE_RATE, excerpt_bounds

    lo, hi = excerpt_bounds(num_samples, args.start, args.end)
    return lo / SAMPLE_RATE, hi / SAMPLE_RATE


def _write(out: Any, name: str, document: dict, array: np.ndarray) -> None:

    emptied(out)
    if name.lower().endswith(".npy"):
        out.flush()
        np.save(out.buffer, np.asarray(array, np.float32))
    else:
        json.dump(document, out)
        out.write("\n")


# ---------------------------------------------------------------------------- compare
def _run_compare(args: argparse.Namespace) -> int:
    from streamer.tasks.embedding import (cosine_distance, describe_model, model_identity,
                                          same_model)

    inputs = [_open_input(path) for path in (args.a, args.b)]  # fail fast, before models
    frontend = _load_model(args) if any(not isinstance(x, dict) for x in inputs) else None
    model_a, model_b = (x["model"] if isinstance(x, dict) else model_identity(frontend)
                        for x in inputs)
    if not same_model(model_a, model_b):  # before any audio is embedded
        raise ValueError(f"cannot compare embeddings of different models: {args.a} "
                         f"({describe_model(model_a)}) and {args.b} "
                         f"({describe_model(model_b)})")
    distance = float(cosine_distance(*(_embedding_of(x, frontend) for x in inputs)))
    if args.json:
        print(json.dumps({"a": args.a, "b": args.b, "model": model_a,
                          "distance": round(distance, 6)}))
    else:
        print(f"{distance:.6f}")
    return 0


def _open_input(path: str) -> Any:
    """A saved document (read and checked now) or an audio file (checked now, read once
    the model is loaded): a bad input is reported before any model loads."""
    from streamer.audio import AudioFile
    from streamer.tasks.embedding import read_document

    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        raise ConfigError(f"{path}: a .npy file does not say which model made it; save the "
                          "embedding as .json to compare it")
    if suffix == ".json":
        saved = read_document(path)
        if saved.embedding is None:
            raise ConfigError(f"{path}: holds {len(saved.segments)} sliding-window "
                              "embeddings; compare takes one embedding per side")
        return {"model": saved.model, "embedding": saved.embedding}
    with AudioFile(path):
        pass
    return path


def _embedding_of(source: Any, frontend: Any) -> np.ndarray:
    from streamer.audio import load_audio
    from streamer.tasks.embedding import embed

    if isinstance(source, dict):
        return source["embedding"]
    return embed(frontend, load_audio(source))
