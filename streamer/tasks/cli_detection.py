"""``streamer vad``, ``osd``, ``scores`` and ``resegment``: the pyannote/segmentation model
card's tasks on whole files (see :mod:`streamer.tasks.detection`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any

import numpy as np

from streamer.cliargs import (add_model_arguments, emptied, open_outputs, preset_of,
                              segmentation_from_args)
from streamer.errors import ConfigError
from streamer.tasks import detection
from streamer.audio import SAMPLE_RATE

_TUNED_HELP = ("use the pyannote/segmentation card's values tuned on this data set "
               "(default: {default}; pyannote presets only)")
_THRESHOLDS = {
    "--onset": "score (0-1) above which a region starts",
    "--offset": "score (0-1) below which a region ends",
    "--min-duration-on": "remove regions shorter than X seconds",
    "--min-duration-off": "fill gaps shorter than X seconds",
}
#: The tasks run the segmentation model alone (see segmentation_from_args).
_NO_EMBEDDING = " The embedding model is not used: --embedding and --precision are ignored."


def add_commands(commands: Any) -> None:
    """Add ``vad``, ``osd``, ``scores`` and ``resegment`` to the ``streamer`` parser."""
    vad = commands.add_parser(
        "vad", help="voice activity detection: speech regions of an audio file",
        description="Speech regions of a whole file. pyannote preset: the segmentation "
                    "model slid over the file, the most active speaker (powerset: the "
                    "probability of speech) averaged over chunks, hysteresis-thresholded. "
                    "Embedded preset: Silero VAD's probabilities, thresholded alike."
                    + _NO_EMBEDDING)
    _add_region_arguments(vad, "vad", "speech")
    vad.set_defaults(run=_run_vad)

    osd = commands.add_parser(
        "osd", help="overlapped speech detection: regions where two or more people speak",
        description="Overlapped speech regions of a whole file: the second most active "
                    "speaker (powerset: the probability of two or more speakers) averaged "
                    "over chunks, hysteresis-thresholded. Needs the pyannote preset."
                    + _NO_EMBEDDING)
    _add_region_arguments(osd, "osd", "overlapped speech")
    osd.set_defaults(run=_run_osd)

    scores = commands.add_parser(
        "scores", help="raw segmentation scores of an audio file as .npy + .json",
        description="Write the model's frame scores over a whole file: PREFIX.npy, float32 "
                    "(frames, classes), and PREFIX.json with the frame timing, class "
                    "labels and model. pyannote preset: per-speaker activations averaged "
                    "over chunks, local speakers kept in the same column from chunk to "
                    "chunk (--raw: the network output, powerset log-probabilities). "
                    "Embedded preset: Silero's speech probability per 32 ms." + _NO_EMBEDDING)
    _add_audio(scores)
    scores.add_argument("--out", required=True, metavar="PREFIX",
                        help="write PREFIX.npy and PREFIX.json")
    scores.add_argument("--raw", action="store_true",
                        help="the network output (powerset log-probabilities) instead of "
                             "per-speaker activations")
    _add_window_arguments(scores)
    add_model_arguments(scores)
    scores.set_defaults(run=_run_scores)

    resegment = commands.add_parser(
        "resegment", help="improve a diarization's boundaries with the segmentation model",
        description="Resegmentation (pyannote): in each sliding chunk the model's local "
                    "speakers are mapped to the baseline's speakers, the mapped activations "
                    "are averaged over chunks and each speaker's track is thresholded. "
                    "Keeps the baseline's labels; speakers may overlap. Needs the pyannote "
                    "preset." + _NO_EMBEDDING)
    resegment.add_argument("--baseline", required=True, metavar="RTTM",
                           help="the diarization to improve")
    resegment.add_argument("--uri", default=None,
                           help="file of the baseline RTTM to use (default: the audio "
                                "file's name without its extension)")
    _add_region_arguments(resegment, "resegmentation", "speaker turns")
    resegment.set_defaults(run=_run_resegment)


def _add_audio(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="wav/flac/ogg (any rate, any channels); mp3/m4a/... "
                                      "need ffmpeg")


def _add_window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--step", type=float, default=None, metavar="SECONDS",
                        help="seconds between model chunks (default: a tenth of the "
                             "model's chunk, as pyannote)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="chunks per model call (default %(default)s)")


def _add_region_arguments(parser: argparse.ArgumentParser, task: str, what: str) -> None:
    _add_audio(parser)
    parser.add_argument("--rttm", metavar="OUT", help=f"write the {what} as RTTM")
    parser.add_argument("--json", metavar="OUT", help=f"write the {what} as JSON")
    group = parser.add_argument_group(
        "thresholds", "a region starts above --onset and ends below --offset; then gaps "
                      "shorter than --min-duration-off are filled and regions shorter than "
                      "--min-duration-on removed; explicit values override --tuned-on's")
    default = detection.DEFAULT_TUNED_ON + " for multilabel models, 0.5/0.5/0/0 for " \
        "powerset ones" + ("; Silero's defaults 0.5/0.35/0.25/0.1 for the embedded preset"
                           if task == "vad" else "")
    group.add_argument("--tuned-on", choices=detection.TUNED_ON, default=None,
                       help=_TUNED_HELP.format(default=default))
    for flag, text in _THRESHOLDS.items():
        group.add_argument(flag, type=float, default=None, metavar="X", help=text)
    _add_window_arguments(parser)
    add_model_arguments(parser)


# ---------------------------------------------------------------------- running
def _run_vad(args: argparse.Namespace) -> int:
    return _run_regions(args, "vad", "SPEECH", detection.detect_speech)


def _run_osd(args: argparse.Namespace) -> int:
    return _run_regions(args, "osd", "OVERLAP", detection.detect_overlap)


def _run_regions(args: argparse.Namespace, task: str, label: str, detect: Any) -> int:
    from streamer.audio import AudioFile

    _check_arguments(args, task)
    with AudioFile(args.audio) as audio:  # fails fast on a bad file, before the models
        with open_outputs({"--rttm": args.rttm, "--json": args.json}) as outputs:
            detector = segmentation_from_args(args)
            binarization = _binarization(args, task, detector)
            samples = _read(audio)
            regions = detect(detector, samples, binarization, step=args.step,
                             batch_size=args.batch_size)
            segments = [(start, end, label) for start, end in regions]
            document = _document(args, task, len(samples), detector, binarization)
            document["regions"] = [{"start": round(s, 3), "end": round(e, 3)}
                                   for s, e in regions]
            _write(outputs, segments, document, args.audio)
    if not args.rttm and not args.json:
        for start, end in regions:
            print(f"{start:9.3f} {end:9.3f}")
    print(f"streamer: {len(samples) / SAMPLE_RATE:.1f} s of audio, {len(regions)} {task} regions, "
          f"{sum(e - s for s, e in regions):.1f} s", file=sys.stderr)
    return 0


def _run_resegment(args: argparse.Namespace) -> int:
    from streamer.audio import AudioFile

    _check_arguments(args, "resegmentation")
    with AudioFile(args.audio) as audio:
        uri, baseline = _baseline(args)
        with open_outputs({"--rttm": args.rttm, "--json": args.json}) as outputs:
            detector = segmentation_from_args(args)
            binarization = _binarization(args, "resegmentation", detector)
            samples = _read(audio)
            segments = detection.resegment(detector, samples, baseline, binarization,
                                           step=args.step, batch_size=args.batch_size)
            document = _document(args, "resegmentation", len(samples), detector,
                                 binarization)
            document.update(baseline=args.baseline, uri=uri, segments=[
                {"speaker": k, "start": round(s, 3), "end": round(e, 3)}
                for s, e, k in segments])
            _write(outputs, segments, document, args.audio)
    if not args.rttm and not args.json:
        for start, end, speaker in segments:
            print(f"{start:9.3f} {end:9.3f} {speaker}")
    print(f"streamer: {len(samples) / SAMPLE_RATE:.1f} s of audio, {len(segments)} turns, "
          f"{len({k for _, _, k in segments})} speakers", file=sys.stderr)
    return 0


def _run_scores(args: argparse.Namespace) -> int:
    from streamer.audio import AudioFile

    _check_window(args)
    paths = {"--out (.npy)": f"{args.out}.npy", "--out (.json)": f"{args.out}.json"}
    with AudioFile(args.audio) as audio:
        with open_outputs(paths) as outputs:
            detector = segmentation_from_args(args)
            samples = _read(audio)
            scores = detection.file_scores(detector, samples, raw=args.raw, step=args.step,
                                           batch_size=args.batch_size)
            document = _scores_document(args, scores, detector, len(samples))
            np.save(emptied(outputs["--out (.npy)"]).buffer, scores.data)
            json.dump(document, emptied(outputs["--out (.json)"]), indent=1)
    print(f"streamer: {len(samples) / SAMPLE_RATE:.1f} s of audio, {scores.data.shape[0]} frames "
          f"x {scores.data.shape[1]} classes -> {args.out}.npy, {args.out}.json",
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- helpers
def _check_arguments(args: argparse.Namespace, task: str) -> None:
    """Bad flags fail before any audio is read or model loaded."""
    _check_window(args)
    overrides = _overrides(args)
    detection.Binarization().with_overrides(**overrides)  # validates explicit values
    if preset_of(args) == "embedded":
        if task != "vad":
            raise ConfigError(detection.no_model_message(task))
        if args.tuned_on:
            raise ConfigError("--tuned-on selects the pyannote/segmentation card's values; "
                              "the embedded preset's Silero VAD has its own defaults: set "
                              "--onset/--offset/--min-duration-on/--min-duration-off instead")


def _check_window(args: argparse.Namespace) -> None:
    if args.step is not None and not args.step > 0:
        raise ConfigError(f"--step must be more than 0 seconds, got {args.step:g}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")


def _overrides(args: argparse.Namespace) -> dict[str, float | None]:
    return {"onset": args.onset, "offset": args.offset,
            "min_duration_on": args.min_duration_on, "min_duration_off": args.min_duration_off}


def _binarization(args: argparse.Namespace, task: str, detector: Any
                  ) -> detection.Binarization:
    return detection.binarization_for(task, detector, args.tuned_on, **_overrides(args))


def _read(audio: Any) -> np.ndarray:
    return np.concatenate([np.zeros(0, np.float32), *audio.blocks()])


def _baseline(args: argparse.Namespace) -> tuple[str, list]:
    """The baseline's segments of this audio file (its RTTM may hold several files)."""
    from streamer.rttm import read_rttm

    if not os.path.isfile(args.baseline):
        raise ConfigError(f"--baseline {args.baseline}: no such file")
    files = read_rttm(args.baseline)
    if not files:
        raise ConfigError(f"--baseline {args.baseline} holds no SPEAKER lines")
    uri = args.uri or os.path.splitext(os.path.basename(args.audio))[0]
    if uri not in files:
        raise ConfigError(f"--baseline {args.baseline} has no segments for {uri!r} (it has "
                          f"{', '.join(sorted(files))}): choose one with --uri")
    if not any(end > start for start, end, _ in files[uri]):
        raise ConfigError(f"--baseline {args.baseline}: the segments of {uri!r} are empty")
    return uri, files[uri]


def _document(args: argparse.Namespace, task: str, samples: int, detector: Any,
              binarization: detection.Binarization) -> dict[str, Any]:
    return {"audio": os.path.basename(args.audio), "duration": round(samples / SAMPLE_RATE, 3),
            "task": task, "tuned_on": args.tuned_on,
            "binarization": binarization.to_dict(), "model": detection.describe(detector)}


def _write(outputs: dict[str, IO[str]], segments: list, document: dict, audio: str) -> None:
    from streamer.events import Turn
    from streamer.rttm import write_rttm

    if "--rttm" in outputs:
        uri = os.path.splitext(os.path.basename(audio))[0]
        turns = [Turn(id=i, speaker=k, start=s, end=e, final=True)
                 for i, (s, e, k) in enumerate(segments)]
        write_rttm(turns, uri, emptied(outputs["--rttm"]))
    if "--json" in outputs:
        json.dump(document, emptied(outputs["--json"]), indent=1)


def _scores_document(args: argparse.Namespace, scores: detection.Scores, detector: Any,
                     samples: int) -> dict[str, Any]:
    kind = detection.detector_kind(detector)
    output = ("speech probability" if kind == "embedded" else
              "log-probabilities" if args.raw and kind == "powerset" else "activations")
    timing = scores.timing
    return {
        "audio": os.path.basename(args.audio), "duration": round(samples / SAMPLE_RATE, 3),
        "sample_rate": SAMPLE_RATE, "file": os.path.basename(f"{args.out}.npy"),
        "shape": list(scores.data.shape), "dtype": "float32",
        "frames": {"start": timing.start, "step": timing.step, "duration": timing.duration},
        "classes": list(scores.labels), "output": output, "raw": bool(args.raw),
        "powerset": kind == "powerset", "chunk_duration": scores.chunk_duration,
        "step": scores.step, "model": detection.describe(detector),
        "note": "frame j covers [start + j*step, start + j*step + duration] seconds"
                + ("; speakers follow local speakers from chunk to chunk, they are not "
                   "global speakers" if kind != "embedded" else ""),
    }
