"""The ``streamer`` command: serve, diarize files, evaluate, benchmark, list models."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Sequence

from streamer import __version__
from streamer.cliargs import (add_model_arguments, add_stream_arguments, config_from_args,
                              emptied, frontend_from_args, open_outputs)
from streamer.config import StreamConfig
from streamer.errors import StreamerError
from streamer.results import JSON_FORMATS
from streamer.audio import SAMPLE_RATE, clip_samples

logger = logging.getLogger("streamer")


class _Once(argparse.Action):
    """An option that may be given once: a second value would silently replace the
    first (a second ``--audio`` set would not be scored), so it is refused."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} is given twice: it names one set; give the "
                         "other sets as folders (streamer eval DIR ...), each with its "
                         "reference.rttm")
        setattr(namespace, self.dest, values)


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
    diarize.add_argument("--json-format", choices=JSON_FORMATS, default="streamer",
                         help="shape of --json: streamer (default: segments in seconds, "
                              "speakers, speech, embeddings, model and config) or meronym "
                              "(the hosted-service shape: segments with H:MM:SS.ffffff "
                              "start/stop, speakers with count, labels and embeddings)")
    diarize.add_argument("--rttm-overlap", metavar="OUT",
                         help="write the regular (overlap-aware) diarization as RTTM: "
                              "turns of different speakers may overlap (pyannote presets)")
    diarize.add_argument("--overlap", action="store_true",
                         help="also find overlapped speech and the overlap-aware "
                              "diarization (implied by --rttm-overlap); --json then holds "
                              "regular_segments and overlap (pyannote presets)")
    diarize.add_argument("--voiceprints", metavar="FILE",
                         help="known voices (a file of `streamer enroll`): turns and "
                              "speakers that match one are named after it")
    diarize.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(diarize)
    add_stream_arguments(diarize, file_mode=True)
    diarize.set_defaults(run=_run_diarize)

    evaluate = commands.add_parser(
        "eval", help="diarize evaluation sets and score them (DER, JER, speaker counts)",
        description="Diarize every file of one or more evaluation sets and print, per file, "
                    "per set and in total: DER and its parts, JER, the speaker count found "
                    "and the reference's, and the real-time factor.")
    evaluate.add_argument("sets", nargs="*", metavar="DIR",
                          help="evaluation set: a folder of audio files with reference.rttm "
                               "(and reference.uem, optional)")
    evaluate.add_argument("--audio", metavar="DIR", action=_Once,
                          help="one more set: a folder of audio files scored against --rttm "
                               "(once; other sets are folders given as DIR)")
    evaluate.add_argument("--rttm", metavar="REF", action=_Once,
                          help="reference RTTM of --audio")
    evaluate.add_argument("--uem", metavar="UEM", action=_Once,
                          help="scored regions of --audio (default: whole files)")
    evaluate.add_argument("--shift", action="append", type=_shift_list, default=[],
                          metavar="SECONDS",
                          help="score each file as a stream that starts SECONDS into it "
                               "and wraps around (audio rotated left, reference and UEM "
                               "alike); repeat it or give a list, e.g. --shift 0,0.9,3.3 "
                               "(0: as recorded)")
    evaluate.add_argument("--gain", action="append", type=_gain_list, default=[],
                          metavar="DB",
                          help="score each file at an input level DB decibels from its "
                               "own (samples scaled, clipped to full scale as a hot input "
                               "is), as microphones set quieter or louder would give it; "
                               "repeat it or give a list, e.g. --gain=-6,0,6 (with '=': a "
                               "list that starts with a minus sign); with --shift, "
                               "every start point at every level")
    evaluate.add_argument("--reference-count", action="store_true",
                          help="give each file num_speakers = its reference's speaker "
                               "count, as a user who knows it would (scores the count "
                               "controls)")
    evaluate.add_argument("--oracle-tracking", action="store_true",
                          help="score each file as tracking that knew the reference "
                               "speakers would: the speaker memory starts with one speaker "
                               "per reference speaker (the mean embedding of the local "
                               "speakers in that speaker's speech) and opens no other. What "
                               "error is left comes from the front end; the 'usual' column "
                               "gives the usual DER next to it")
    evaluate.add_argument("--json", metavar="OUT", help="write every figure (per file, per "
                                                        "set, total) as JSON")
    add_model_arguments(evaluate)
    add_stream_arguments(evaluate, file_mode=True)
    evaluate.set_defaults(run=_run_eval)

    bench = commands.add_parser("bench", help="compute time of one step of one stream")
    bench.add_argument("--audio", default=None, help="speech to stream (default: a built-in "
                                                     "signal or ../shared/eval/sample.wav)")
    bench.add_argument("--steps", type=int, default=200, help="steps to time (default 200)")
    add_model_arguments(bench)
    add_stream_arguments(bench)
    bench.set_defaults(run=_run_bench)

    from streamer.tasks import cli_detection, cli_embedding

    cli_detection.add_commands(commands)
    cli_embedding.add_commands(commands)

    enroll = commands.add_parser(
        "enroll", help="make the voiceprint of one voice and add it to a voiceprint file",
        description="Make the voiceprint of NAME from audio of that voice alone (at most "
                    "30 s in all, at least 3 s of speech; audio with a second voice is "
                    "refused) and add it to --out (an entry of the same name is replaced). "
                    "Give the file to `streamer diarize --voiceprints` or its entries to a "
                    "stream's start.config.known_speakers.")
    enroll.add_argument("name", help="the name turns of this voice will carry")
    enroll.add_argument("audio", nargs="+", help="audio file(s) of this voice, joined")
    enroll.add_argument("--out", required=True, metavar="FILE",
                        help="voiceprint file to add to (made if missing)")
    add_model_arguments(enroll)
    enroll.set_defaults(run=_run_enroll)

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
    bar = tqdm(total=round(total / SAMPLE_RATE, 1) if total else None, unit="s", unit_scale=False,
               desc="diarizing", leave=False, bar_format=shape)

    def update(done: int) -> None:
        bar.n = round(done / SAMPLE_RATE, 1)
        bar.refresh()

    return update, bar.close


def _run_diarize(args: argparse.Namespace) -> int:
    from streamer.audio import AudioFile
    from streamer.filemode import run_file
    from streamer.results import Diarization, uri_of

    with AudioFile(args.audio) as audio:  # fails fast on a bad file, before loading models
        config = config_from_args(args)
        if args.overlap or args.rttm_overlap:
            config = StreamConfig(**{**config.to_dict(), "outputs": ["overlap", "regular"]})
        with open_outputs({"--rttm": args.rttm, "--rttm-overlap": args.rttm_overlap,
                            "--json": args.json}) as outputs:
            frontend = frontend_from_args(args)
            update, close = _progress(audio.expected_samples, not args.no_progress)
            started = time.perf_counter()
            try:
                turns, regions, engine = run_file(frontend, audio, config, chunk=5.0,
                                                  progress=update, passes=args.passes)
            finally:
                close()
            elapsed = time.perf_counter() - started
            result = Diarization(turns, regions, engine, uri_of(args.audio),
                                 os.path.basename(args.audio))
            if "--rttm" in outputs:
                emptied(outputs["--rttm"]).write(result.to_rttm())
            if "--rttm-overlap" in outputs:
                emptied(outputs["--rttm-overlap"]).write(result.to_rttm(regular=True))
            if "--json" in outputs:
                json.dump(result.to_json(args.json_format), emptied(outputs["--json"]),
                          indent=1)
    if not args.rttm and not args.json and not args.rttm_overlap:
        for turn in turns:
            named = f" {turn.identity}" if turn.identity else ""
            print(f"{turn.start:9.3f} {turn.end:9.3f} {turn.speaker}{named}")
    duration = result.duration
    print(f"streamer: {duration:.1f} s of audio, {len(turns)} turns, "
          f"{len(result.labels)} speakers, {elapsed:.2f} s "
          f"(real-time factor {elapsed / max(duration, 1e-9):.3f})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- enroll
def _run_enroll(args: argparse.Namespace) -> int:
    import numpy as np

    from streamer.audio import load_audio
    from streamer.enrollment import enroll
    from streamer.voiceprints import add_voiceprint, check_name, read_voiceprints

    check_name(args.name, "NAME")
    if os.path.exists(args.out):
        read_voiceprints(args.out)  # a file that is not one fails before the work
    samples = np.concatenate([load_audio(path) for path in args.audio])
    voiceprint = enroll(frontend_from_args(args), samples)
    count = add_voiceprint(args.out, args.name, voiceprint)
    print(f"streamer: enrolled {args.name!r} from {voiceprint['speech']:.1f} s of speech; "
          f"{args.out} holds {count} voiceprint(s)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- eval
def _number_list(text: str, unit: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of {unit}: {text!r}") from None


def _shift_list(text: str) -> list[float]:
    return _number_list(text, "seconds")


def _gain_list(text: str) -> list[float]:
    gains = _number_list(text, "decibels")
    if any(not -60.0 <= gain <= 60.0 for gain in gains):
        raise argparse.ArgumentTypeError(f"gains are decibels within ±60, got {text!r}")
    return gains


def _eval_sets(args: argparse.Namespace) -> list:
    from streamer.evaluation import load_eval_set

    if (args.rttm or args.uem) and not args.audio:
        raise ValueError("--rttm and --uem describe --audio DIR; give it too")
    sets = [load_eval_set(directory) for directory in args.sets]
    if args.audio:
        sets.append(load_eval_set(args.audio, args.rttm, args.uem))
    if not sets:
        raise ValueError("nothing to evaluate: give folders (streamer eval DIR ...) or "
                         "--audio DIR --rttm REF")
    names: set[str] = set()
    for eval_set in sets:  # two folders of the same name get "-2", "-3"
        name, n = eval_set.name, 1
        while name in names:
            n += 1
            name = f"{eval_set.name}-{n}"
        eval_set.name = name
        names.add(name)
    return sets


def _score_start_point(frontend, config, samples, reference: list, uem: list | None,
                       shift: float | None, oracle: bool = False, gain: float | None = None,
                       passes: int = 1):
    """Diarize ``samples`` as a stream that starts ``shift`` seconds into them (``None``:
    as recorded), ``gain`` dB louder (``None``: as recorded), and score it against the
    reference moved alike. Returns the score and,
    with ``oracle`` (:mod:`streamer.oracle`: the score is then the oracle tracking's),
    the usual run's score and the number of reference speakers seeded (the seeded run
    is one pass: its speakers are known from the start).
    ``passes``: how many times the file is streamed (see :func:`streamer.engine.run_passes`)."""
    from streamer.engine import diarize_array
    from streamer.evaluation import rotate_samples, rotate_segments, rotate_uem, score_file
    from streamer.oracle import CHUNK, diarize_with_oracle

    duration = len(samples) / SAMPLE_RATE
    if gain is not None:
        samples = clip_samples(samples * 10.0 ** (gain / 20.0))
    if shift is not None:
        samples, applied = rotate_samples(samples, shift)
        reference = rotate_segments(reference, applied, duration)
        uem = rotate_uem(uem, applied, duration)
    started = time.perf_counter()
    usual = seeded = None
    if oracle:
        turns, usual, seeded = diarize_with_oracle(frontend, samples, reference, config)
        if passes > 1:
            usual, _ = diarize_array(frontend, samples, config, chunk=CHUNK, passes=passes)
    else:
        turns, _ = diarize_array(frontend, samples, config, chunk=CHUNK, passes=passes)
    elapsed = time.perf_counter() - started

    def score(found: list) -> Any:
        return score_file(reference, [(t.start, t.end, t.speaker) for t in found], uem,
                          duration, elapsed)

    return score(turns), (None if usual is None else (score(usual), seeded))


def _run_eval(args: argparse.Namespace) -> int:
    from streamer.audio import load_audio
    from streamer.evaluation import Score

    sets = _eval_sets(args)
    shifts = list(dict.fromkeys(s for group in args.shift for s in group)) or [None]
    gains = list(dict.fromkeys(g for group in args.gain for g in group)) or [None]
    runs = [(shift, gain) for shift in shifts for gain in gains]
    config = config_from_args(args)
    frontend = frontend_from_args(args)

    def condition(shift: float | None, gain: float | None) -> str:
        return ((f"@{shift:g}" if shift is not None else "")
                + (f"@{gain:+g}dB" if gain is not None else ""))

    def label(set_name: str, uri: str, run: tuple[float | None, float | None]) -> str:
        return (f"{set_name}/" if len(sets) > 1 else "") + uri + condition(*run)

    def over_all(set_name: str, uri: str) -> str:
        return label(set_name, uri, (None, None)) + "@all"

    several = len(runs) > 1
    width = max([12] + [len(label(s.name, uri, run)) for s in sets for uri in s.audio
                        for run in runs] + [len(f"{s.name}/TOTAL") for s in sets]
                + [len(over_all(s.name, uri)) for s in sets for uri in s.audio if several])
    oracle = args.oracle_tracking
    print(f"{'file':{width}s} {'DER':>6s} {'miss':>6s} {'FA':>6s} {'conf':>6s} "
          f"{'DER-ov':>7s} {'JER':>6s} {'spk':>4s} {'ref':>4s} {'RTF':>6s}"
          + (f" {'usual':>6s} {'seeded':>6s}" if oracle else ""), flush=True)
    total, document = Score(), {"files": [], "sets": {}}
    usual_total, seeded_total = Score(), 0

    def extra(usual, seeded) -> str:
        return "" if not oracle else f" {100 * usual.der.der:5.1f}% {seeded:>6}"

    for eval_set in sets:
        subtotal, usual_subtotal, seeded_subtotal = Score(), Score(), 0
        for uri, path in eval_set.audio.items():
            samples = load_audio(path)
            reference = eval_set.reference[uri]
            counted = config
            if args.reference_count:
                counted = dataclasses.replace(
                    config, num_speakers=max(1, len({s for _, _, s in reference})))
            file_total, worst = Score(), None
            for shift, gain in runs:
                score, usual = _score_start_point(frontend, counted, samples, reference,
                                                  eval_set.uem.get(uri), shift, oracle, gain,
                                                  args.passes)
                subtotal.add(score)
                file_total.add(score)
                if worst is None or score.der.der > worst[1]:
                    worst = ((shift, gain), score.der.der)
                entry = {"set": eval_set.name, "file": uri, "shift": shift, "gain": gain,
                         **score.to_dict()}
                if usual is not None:
                    usual_subtotal.add(usual[0])
                    seeded_subtotal += usual[1]
                    entry.update(usual=usual[0].to_dict(), seeded=usual[1])
                print(_row(label(eval_set.name, uri, (shift, gain)), score, width)
                      + extra(*(usual or (None, None))), flush=True)
                document["files"].append(entry)
            if several:
                # The file over its start points (and levels), and the one it fared worst
                # from: a tracker that holds must hold from every one, not on average.
                print(_row(over_all(eval_set.name, uri), file_total, width)
                      + f"  worst {100 * worst[1]:.1f}% {condition(*worst[0])}", flush=True)
                document.setdefault("start_points", []).append(
                    {"set": eval_set.name, "file": uri, **file_total.to_dict(),
                     "worst": {"shift": worst[0][0], "gain": worst[0][1], "der": worst[1]}})
        total.add(subtotal)
        usual_total.add(usual_subtotal)
        seeded_total += seeded_subtotal
        document["sets"][eval_set.name] = subtotal.to_dict()
        if oracle:
            document["sets"][eval_set.name]["usual"] = usual_subtotal.to_dict()
        if len(sets) > 1:
            print(_row(f"{eval_set.name}/TOTAL", subtotal, width)
                  + extra(usual_subtotal, seeded_subtotal), flush=True)
    print(_row("TOTAL", total, width) + extra(usual_total, seeded_total))
    print("DER: no collar, overlapped speech scored; DER-ov: regions of overlapped reference "
          "speech excluded; JER: Jaccard error rate, mean over reference speakers; spk, ref: "
          "speakers found and in the reference, in TOTAL (and @all) rows the runs where they "
          "agree; RTF: compute time / audio time")
    if oracle:
        print("oracle tracking: the speaker memory starts with the file's reference "
              "speakers ('seeded': those with local speakers in their speech) and opens no "
              "other; 'usual': the DER of the usual run")
    if shifts != [None]:
        print("FILE@S: the file streamed from S seconds on, wrapping around (audio rotated "
              "left by S s, reference and scored region alike)")
    if gains != [None]:
        print("FILE@GdB: the file G dB louder than recorded (clipped to full scale)")
    if several:
        print("FILE@all: the file over all its start points and levels, with its worst "
              "DER and where that was")
    if args.json:
        if oracle:
            document["usual"] = usual_total.to_dict()
        document.update(total=total.to_dict(), shifts=shifts if shifts != [None] else [],
                        gains=gains if gains != [None] else [],
                        reference_count=args.reference_count, oracle_tracking=oracle,
                        passes=args.passes, model=frontend.describe(),
                        config=config.to_dict())
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=1)
    return 0


def _row(name: str, score, width: int) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:5.1f}%"

    d, total = score.der, score.der.total or 1.0
    if score.speakers is None:
        counts = f"{score.right_count}/{score.files}"
        counts = f"{counts:>9s}"
    else:
        counts = f"{score.speakers:>4} {score.reference_speakers:>4}"
    return (f"{name:{width}s} {pct(d.der)} {pct(d.missed / total)} "
            f"{pct(d.false_alarm / total)} {pct(d.confusion / total)} "
            f"{pct(score.der_no_overlap.der):>7s} {pct(score.jer.jer)} {counts} "
            f"{score.rtf:6.3f}")


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
