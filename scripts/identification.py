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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    frontend = load_frontend(args.preset)
    reference = read_rttm(os.path.join(args.folder, "reference.rttm"))
    files = sorted(uri for uri in reference
                   if os.path.exists(os.path.join(args.folder, uri + ".wav")))
    audio = {uri: load_audio(os.path.join(args.folder, uri + ".wav")) for uri in files}
    prints, home = {}, {}
    for uri in files:
        for voice in sorted({s for *_, s in reference[uri]}):
            if voice in prints:
                continue
            turns = sorted((s, e) for s, e, v in reference[uri] if v == voice)
            samples = enrolment_audio(audio[uri], turns)
            if samples is not None:
                prints[voice] = enroll(frontend, samples)
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
