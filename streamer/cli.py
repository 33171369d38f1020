"""The ``streamer`` command: serve, diarize files, evaluate, benchmark, list models."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import IO, Callable, Iterator, Sequence

from streamer import __version__
from streamer.cliargs import (add_model_arguments, add_stream_arguments, config_from_args,
                              frontend_from_args)
from streamer.errors import ConfigError, StreamerError

logger = logging.getLogger("streamer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer", description="Real-time speaker diarization: who speaks when.")
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the websocket server")
    from streamer.server import cli as server_cli

    server_cli.add_arguments(serve)
    serve.set_defaults(run=server_cli.main)

    diarize = commands.add_parser("diarize", help="diarize an audio file through the "
                                                  "streaming engine")
    diarize.add_argument("audio", help="wav/flac/ogg (any rate, any channels); mp3/m4a/... "
                                       "need ffmpeg")
    diarize.add_argument("--rttm", metavar="OUT", help="write the turns as RTTM")
    diarize.add_argument("--json", metavar="OUT", help="write segments, speakers and "
                                                      "embeddings as JSON")
    diarize.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(diarize)
    add_stream_arguments(diarize)
    diarize.set_defaults(run=_run_diarize)

    evaluate = commands.add_parser("eval", help="diarize a folder and score it (DER)")
    evaluate.add_argument("--audio", required=True, metavar="DIR", help="folder of audio files")
    evaluate.add_argument("--rttm", required=True, metavar="REF", help="reference RTTM")
    evaluate.add_argument("--uem", metavar="UEM", help="scored regions (default: whole files)")
    add_model_arguments(evaluate)
    add_stream_arguments(evaluate)
    evaluate.set_defaults(run=_run_eval)

    bench = commands.add_parser("bench", help="compute time of one step of one stream")
    bench.add_argument("--audio", default=None, help="speech to stream (default: a built-in "
                                                     "signal or ../shared/eval/sample.wav)")
    bench.add_argument("--steps", type=int, default=200, help="steps to time (default 200)")
    add_model_arguments(bench)
    add_stream_arguments(bench)
    bench.set_defaults(run=_run_bench)

    models = commands.add_parser("models", help="list presets and where their weights "
                                                "come from")
    models.set_defaults(run=_run_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    if args.command != "serve":
        logging.basicConfig(level=logging.WARNING, format="streamer: %(message)s")
    try:
        return int(args.run(args) or 0)
    except (StreamerError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()
        print(f"streamer: error: {message[0] if message else type(error).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------- diarize
def _progress(total: int | None,
              enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not enabled or not sys.stderr.isatty():
        return (lambda done: None), (lambda: None)
    from tqdm import tqdm

    shape = ("{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]"
             if total else "{desc} {n:.1f} s [{elapsed}]")  # ffmpeg formats: length unknown
    bar = tqdm(total=round(total / 16000, 1) if total else None, unit="s", unit_scale=False,
               desc="diarizing", leave=False, bar_format=shape)

    def update(done: int) -> None:
        bar.n = round(done / 16000, 1)
        bar.refresh()

    return update, bar.close


def _run_diarize(args: argparse.Namespace) -> int:
    from streamer.audio import AudioFile
    from streamer.filemode import diarize_file
    from streamer.rttm import write_rttm

    with AudioFile(args.audio) as audio:  # fails fast on a bad file, before loading models
        config = config_from_args(args)
        with _open_outputs({"--rttm": args.rttm, "--json": args.json}) as outputs:
            frontend = frontend_from_args(args)
            update, close = _progress(audio.expected_samples, not args.no_progress)
            started = time.perf_counter()
            try:
                turns, engine = diarize_file(frontend, audio, config, chunk=5.0,
                                             progress=update)
            finally:
                close()
            elapsed = time.perf_counter() - started
            duration = engine.position
            uri = os.path.splitext(os.path.basename(args.audio))[0]
            if "--rttm" in outputs:
                write_rttm(turns, uri, _emptied(outputs["--rttm"]))
            if "--json" in outputs:
                document = diarization_document(args.audio, duration, turns, engine)
                json.dump(document, _emptied(outputs["--json"]), indent=1)
    if not args.rttm and not args.json:
        for turn in turns:
            print(f"{turn.start:9.3f} {turn.end:9.3f} {turn.speaker}")
    print(f"streamer: {duration:.1f} s of audio, {len(turns)} turns, "
          f"{len({t.speaker for t in turns})} speakers, {elapsed:.2f} s "
          f"(real-time factor {elapsed / max(duration, 1e-9):.3f})", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _open_outputs(paths: dict[str, str | None]) -> Iterator[dict[str, IO[str]]]:
    """The output files, opened before the work so that a bad path fails at once rather
    than after an hour of audio. They are opened without truncating (an old result
    survives a failed run) and emptied just before writing; a file this run created is
    removed if the run fails."""
    files: dict[str, IO[str]] = {}
    created: list[str] = []
    done = False
    try:
        for flag, path in paths.items():
            if not path:
                continue
            if any(os.path.exists(path) and os.path.samefile(path, f.name)
                   for f in files.values()):
                raise ConfigError(f"{flag} {path}: the same file as another output")
            existed = os.path.lexists(path)
            try:
                files[flag] = open(path, "a", encoding="utf-8")
            except OSError as error:
                raise ConfigError(
                    f"cannot write {flag} {path}: {_os_reason(error, path)}") from None
            if not existed:
                created.append(path)
        yield files
        done = True
    finally:
        for file in files.values():
            file.close()
        if not done:
            for path in created:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _emptied(file: IO[str]) -> IO[str]:
    if file.seekable():
        file.truncate(0)
    return file


def _os_reason(error: OSError, path: str) -> str:
    if isinstance(error, FileNotFoundError):
        return f"no such folder {os.path.dirname(path) or '.'}"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)


def diarization_document(audio: str, duration: float, turns: list, engine) -> dict:
    """The JSON result of file mode, shaped like offline diarization services' output."""
    speakers = [s for s in engine.speakers() if s.speech > 0]
    return {
        "audio": os.path.basename(audio),
        "duration": round(duration, 3),
        "num_speakers": len(speakers),
        "speakers": [s.label for s in speakers],
        "segments": [{"speaker": t.speaker, "start": round(t.start, 3), "end": round(t.end, 3)}
                     for t in turns],
        "speech": {s.label: round(s.speech, 3) for s in speakers},
        "embeddings": {s.label: [round(x, 6) for x in s.embedding] for s in speakers},
        "model": engine.frontend.describe(),
        "config": engine.config.to_dict(),
    }


# ---------------------------------------------------------------------------- eval
def _run_eval(args: argparse.Namespace) -> int:
    from streamer.audio import AudioFile
    from streamer.evaluation import DerComponents, der_components
    from streamer.filemode import diarize_file
    from streamer.rttm import read_rttm, read_uem

    reference = read_rttm(args.rttm)
    uem = read_uem(args.uem) if args.uem else {}
    files = sorted(name for name in os.listdir(args.audio)
                   if os.path.splitext(name)[0] in reference)
    if not files:
        raise ValueError(f"no audio file in {args.audio} matches a file id of {args.rttm}")
    config = config_from_args(args)
    frontend = frontend_from_args(args)
    total, no_overlap = DerComponents(), DerComponents()
    compute = audio_seconds = 0.0
    print(f"{'file':12s} {'DER':>6s} {'miss':>6s} {'FA':>6s} {'conf':>6s} {'DER-ov':>7s} "
          f"{'spk':>4s} {'ref':>4s} {'RTF':>6s}")
    for name in files:
        uri = os.path.splitext(name)[0]
        with AudioFile(os.path.join(args.audio, name)) as audio:
            started = time.perf_counter()
            turns, engine = diarize_file(frontend, audio, config, chunk=5.0)
            elapsed = time.perf_counter() - started
        compute += elapsed
        audio_seconds += engine.position
        hyp = [(t.start, t.end, t.speaker) for t in turns]
        scored = uem.get(uri)
        d = der_components(reference[uri], hyp, scored)
        o = der_components(reference[uri], hyp, scored, skip_overlap=True)
        total.add(d)
        no_overlap.add(o)
        print(_row(uri, d, o, len({t.speaker for t in turns}),
                   len({s for *_, s in reference[uri]}), elapsed / engine.position))
    print(_row("TOTAL", total, no_overlap, None, None, compute / audio_seconds))
    print("DER: no collar, overlapped speech scored; DER-ov: regions of overlapped reference "
          "speech excluded; RTF: compute time / audio time")
    return 0


def _row(uri: str, d, o, speakers, refs, rtf: float) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:5.1f}%"

    total = d.total or 1.0
    return (f"{uri:12s} {pct(d.der)} {pct(d.missed / total)} {pct(d.false_alarm / total)} "
            f"{pct(d.confusion / total)} {pct(o.der):>7s} {speakers if speakers is not None else '':>4} "
            f"{refs if refs is not None else '':>4} {rtf:6.3f}")


# ---------------------------------------------------------------------------- bench
def _run_bench(args: argparse.Namespace) -> int:
    from streamer.bench import run_step_benchmark

    print(run_step_benchmark(args))
    return 0


# ---------------------------------------------------------------------------- models
def _run_models(args: argparse.Namespace) -> int:
    from streamer.presets import PRESETS

    for name, preset in PRESETS.items():
        print(f"{name}{' (default)' if name == 'embedded' else ''}: {preset['description']}")
        print(f"  segmentation: {preset['segmentation']}")
        print(f"  embedding:    {preset['embedding']}")
    print("pyannote models may also come from a local pytorch_model.bin or a folder holding "
          "one: --segmentation PATH --embedding PATH")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
