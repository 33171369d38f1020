#!/usr/bin/env python
"""How well voiceprints identify enrolled voices, and how rarely they name unknown ones.

    python scripts/identification.py ../shared/eval/synth [--threshold T] [--json OUT]

Every reference voice of the folder is enrolled from 10-20 s of its own speech in the
first file where it has that much (its reference turns, cut out and joined). The voices
are split in two halves; each half in turn is given to the engine as known speakers while
every file is diarized, so each voice is scored once as enrolled (in the files other than
its enrolment file) and once as unknown. Prints, per file and in total, the share of
enrolled voices' speech whose turn names the right identity, and the share of unknown
voices' speech that is given some known identity. With ``--sweep``, also the similarity of
each speaker to each voiceprint, to choose a threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from streamer.audio import load_audio
from streamer.config import StreamConfig
from streamer.engine import diarize_array
from streamer.presets import load_frontend
from streamer.rttm import read_rttm
from streamer.enrollment import enroll
from streamer.voiceprints import VoiceprintError

GRID = 0.01


def enrolment_audio(samples: np.ndarray, turns: list[tuple[float, float]],
                    least: float = 10.0, most: float = 20.0) -> np.ndarray | None:
    pieces, total = [], 0.0
    for start, end in turns:
        take = min(end - start, most - total)
        if take <= 0.3:
            continue
        pieces.append(samples[int(start * 16000): int((start + take) * 16000)])
        total += take
        if total >= most:
            break
    return np.concatenate(pieces) if total >= least else None


def identity_grid(turns, duration: float) -> np.ndarray:
    times = np.arange(0.0, duration, GRID)
    names = np.full(len(times), None, dtype=object)
    for turn in turns:
        names[(times >= turn.start) & (times < turn.end)] = turn.identity
    return names


def voice_clips(audio: dict, reference: dict):
    """``(file, voice, clip)`` for each voice of each file with enough speech to enroll
    (:func:`enrolment_audio`), files in the order of ``audio``."""
    for uri, samples in audio.items():
        for voice in sorted({s for *_, s in reference[uri]}):
            turns = sorted((s, e) for s, e, v in reference[uri] if v == voice)
            clip = enrolment_audio(samples, turns)
            if clip is not None:
                yield uri, voice, clip


def consistency(frontend, audio: dict, reference: dict) -> None:
    """Whether a voice's voiceprints from two files are nearer to each other than to any
    other voice of the second file: every voice is enrolled in every file where it has
    10 s of speech, and each print from file A is compared with the prints of file B."""
    prints: dict[tuple[str, str], np.ndarray] = {}
    for uri, voice, clip in voice_clips(audio, reference):
        try:
            vector = np.asarray(enroll(frontend, clip)["vector"], np.float64)
        except VoiceprintError as error:  # e.g. the engine found two voices in it
            print(f"{voice} in {uri}: not enrolled ({error})")
            continue
        prints[uri, voice] = vector / np.linalg.norm(vector)
    nearest = pairs = 0
    same_low, other_high = 1.0, -1.0
    for (home, voice), vector in prints.items():
        for uri in audio:
            if uri == home or (uri, voice) not in prints:
                continue
            same = float(vector @ prints[uri, voice])
            others = [float(vector @ v) for (u, w), v in prints.items() if u == uri and w != voice]
            pairs += 1
            nearest += not others or same > max(others)
            same_low = min(same_low, same)
            other_high = max([other_high] + others)
    print(f"voiceprint consistency: the same voice's print from another file is the nearest "
          f"in {nearest} of {pairs} cases; same voice similarity down to {same_low:.3f}, "
          f"another voice's up to {other_high:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--consistency", action="store_true",
                        help="only check whether each voice's prints from different files "
                             "are nearer to each other than to other voices")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    frontend = load_frontend(args.preset)
    reference = read_rttm(os.path.join(args.folder, "reference.rttm"))
    files = sorted(uri for uri in reference
                   if os.path.exists(os.path.join(args.folder, uri + ".wav")))
    audio = {uri: load_audio(os.path.join(args.folder, uri + ".wav")) for uri in files}
    if args.consistency:
        consistency(frontend, audio, reference)
        return 0
    prints, home = {}, {}
    for uri, voice, clip in voice_clips(audio, reference):  # each voice's first file
        if voice not in prints:
            prints[voice] = enroll(frontend, clip)
            home[voice] = uri
    voices = sorted(prints)
    halves = [voices[0::2], voices[1::2]]
    print(f"enrolled {len(voices)} voices: " + ", ".join(f"{v} ({home[v]})" for v in voices))
    known_ok = known_total = unknown_named = unknown_total = 0.0
    rows = []
    for uri in files:
        duration = len(audio[uri]) / 16000
        times = np.arange(0.0, duration, GRID)
        file_ok = file_known = file_named = file_unknown = 0.0
        for half in halves:
            config = StreamConfig(known_speakers=[{"name": v, "voiceprint": prints[v]}
                                                  for v in half],
                                  identity_threshold=args.threshold)
            turns, _ = diarize_array(frontend, audio[uri], config)
            names = identity_grid(turns, duration)
            for start, end, voice in reference[uri]:
                inside = (times >= start) & (times < end)
                if voice in half and home.get(voice) != uri:
                    file_known += inside.sum() * GRID
                    file_ok += (names[inside] == voice).sum() * GRID
                elif voice not in half:
                    file_unknown += inside.sum() * GRID
                    file_named += np.array([n is not None for n in names[inside]]).sum() * GRID
        rows.append({"file": uri, "enrolled_speech": round(file_known, 2),
                     "identified": round(file_ok / max(file_known, 1e-9), 4),
                     "unknown_speech": round(file_unknown, 2),
                     "named_unknown": round(file_named / max(file_unknown, 1e-9), 4)})
        known_ok += file_ok
        known_total += file_known
        unknown_named += file_named
        unknown_total += file_unknown
    print(f"{'file':10s} {'enrolled s':>10s} {'right id':>9s} {'unknown s':>10s} {'named':>7s}")
    for row in rows:
        print(f"{row['file']:10s} {row['enrolled_speech']:10.1f} {100 * row['identified']:8.1f}% "
              f"{row['unknown_speech']:10.1f} {100 * row['named_unknown']:6.1f}%")
    total = {"identified": known_ok / max(known_total, 1e-9),
             "named_unknown": unknown_named / max(unknown_total, 1e-9)}
    print(f"{'TOTAL':10s} {known_total:10.1f} {100 * total['identified']:8.1f}% "
          f"{unknown_total:10.1f} {100 * total['named_unknown']:6.1f}%")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": " ".join(sys.argv), "files": rows, "total": total}, handle,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
