#!/usr/bin/env python
"""How soon ``speaker_start`` events follow the true turn starts of a reference.

    python scripts/speaker_change_latency.py ../shared/eval/synth [DIR ...]

Streams every file of each folder (with ``reference.rttm``) through the engine in
``--chunk``-second frames, as a microphone would, with the ``speaker_changes`` output.
For each reference turn at least ``--min-turn`` long, the latency is the stream position
at which the first ``speaker_start`` whose ``time`` lies within ``--tolerance`` seconds of
the turn's start was produced, minus that start. Turns with no such event are counted
as missed. Prints p50/p95 per folder and in total; compute time is not included (the
engine's own wait only: a server adds its processing delay).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from streamer.audio import load_audio
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer
from streamer.events import SpeakerChange
from streamer.presets import load_frontend
from streamer.rttm import read_rttm


def starts(frontend, samples: np.ndarray, chunk: float) -> list[tuple[float, float]]:
    """``[(position when produced, start time)]`` of the speaker_start events."""
    engine = StreamingDiarizer(frontend, StreamConfig(outputs=["speaker_changes"]))
    size, found = int(chunk * 16000), []
    for offset in range(0, len(samples), size):
        position = min(offset + size, len(samples)) / 16000
        found += [(position, e.time) for e in engine.feed(samples[offset: offset + size])
                  if isinstance(e, SpeakerChange) and e.kind == "speaker_start"]
    return found


def latencies(reference, events, tolerance: float, shortest: float) -> tuple[list, int]:
    result, missed = [], 0
    for start, end, _ in sorted(reference):
        if end - start < shortest:
            continue
        near = [p - start for p, t in events if abs(t - start) <= tolerance and p >= start]
        if near:
            result.append(min(near))
        else:
            missed += 1
    return result, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--chunk", type=float, default=0.1)
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--min-turn", type=float, default=1.0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    frontend = load_frontend(args.preset)
    everything, all_missed = [], 0
    for folder in args.folders:
        reference = read_rttm(os.path.join(folder, "reference.rttm"))
        found, missed = [], 0
        for uri in sorted(reference):
            path = os.path.join(folder, uri + ".wav")
            if not os.path.exists(path):
                continue
            values, lost = latencies(reference[uri], starts(frontend, load_audio(path),
                                                            args.chunk),
                                     args.tolerance, args.min_turn)
            found += values
            missed += lost
        report(folder, found, missed)
        everything += found
        all_missed += missed
    report("TOTAL", everything, all_missed)
    return 0


def report(name: str, values: list[float], missed: int) -> None:
    if values:
        p50, p95 = np.percentile(values, [50, 95])
        print(f"{name}: {len(values)} turns, speaker_start after the true start p50 "
              f"{p50:.2f} s, p95 {p95:.2f} s; {missed} turns without a start within the "
              f"tolerance", flush=True)
    else:
        print(f"{name}: no turn matched ({missed} missed)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
