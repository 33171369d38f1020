#!/usr/bin/env python
"""What the embedded preset's GE2E windows allow: speech known, every window given its
nearest reference speaker.

    python scripts/window_bound.py ../shared/eval ../shared/eval/synth [--shift 0,0.9,...]

Each file is streamed once through the embedded preset, keeping every window embedding it
makes (1.5 s windows every 0.5 s). Each reference speaker's centroid is the mean of the
windows it speaks alone (at least 80 % of the window, the others under 0.05 s). Every
window then goes to the nearest centroid, and every frame of reference speech takes the
label its covering windows vote for, as the preset's own frames do
(``EmbeddedStream._membership``). Speech is the reference's, so there is no false alarm;
overlapped speech counts as missed beyond one speaker (turns are exclusive), and all of a
file's speech where the preset makes no window at all; confusion is speech given a speaker
who does not speak there. Where each speaker has many windows of its own, what is left
is the windows' own limit: tracking, voice activity detection and the front end's
clustering add to it, and only another window grid or other embeddings could go below it.
It is not a strict floor: a speaker with few windows of its own gets a poor centroid (on
some AMI excerpts the preset itself does better).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np

from streamer.audio import SAMPLE_RATE, load_audio
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, chunked, run_engine
from streamer.evaluation import load_eval_set, rotate_samples, rotate_segments
from streamer.models.embedded import EmbeddedFrontend

#: Scoring grid, seconds.
GRID = 0.01
#: A window is one speaker's when it speaks this share of it and the others less than
#: ``OTHERS`` seconds.
ALONE, OTHERS = 0.8, 0.05


@dataclass
class Score:
    speech: float = 0.0  # reference speaker-seconds
    missed: float = 0.0
    confused: float = 0.0

    def add(self, other: "Score") -> None:
        self.speech += other.speech
        self.missed += other.missed
        self.confused += other.confused

    def row(self, name: str) -> str:
        share = lambda value: 100 * value / max(self.speech, 1e-9)
        return (f"{name:22s} {share(self.missed + self.confused):5.1f}%"
                f" {share(self.missed):6.1f}% {share(self.confused):6.1f}%")


def windows_of(frontend: EmbeddedFrontend, samples: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, object]:
    """End samples and embeddings of the windows the embedded preset makes over
    ``samples`` (file mode), and the stream that made them."""
    engine = StreamingDiarizer(frontend, StreamConfig(), file_mode=True)
    stream = engine._stream
    stream.record()
    run_engine(engine, chunked(samples, 5.0))
    windows = stream.recording().windows
    stops = np.array(sorted(windows), dtype=np.int64)
    embeddings = (np.stack([windows[s] for s in stops]) if windows
                  else np.zeros((0, frontend.encoder.dimension), np.float32))
    return stops, embeddings, stream


def bound(frontend: EmbeddedFrontend, samples: np.ndarray,
          reference: list[tuple[float, float, str]]) -> Score:
    stops, embeddings, stream = windows_of(frontend, samples)
    names = sorted({speaker for _, _, speaker in reference})
    frames = int(len(samples) / SAMPLE_RATE / GRID)
    speaking = np.zeros((frames, len(names)), bool)
    for start, end, speaker in reference:
        speaking[int(round(start / GRID)):int(round(end / GRID)), names.index(speaker)] = True
    heard = speaking.sum(axis=1)
    if len(stops) == 0:  # no window (no speech found): nobody can be named
        return Score(speech=heard.sum() * GRID, missed=heard.sum() * GRID)
    window = stream.window_samples / SAMPLE_RATE
    # Seconds each speaker speaks in each window.
    shares = np.stack([speaking[max(0, int(round((s / SAMPLE_RATE - window) / GRID))):
                                int(round(s / SAMPLE_RATE / GRID))].sum(axis=0) * GRID
                       for s in stops])
    centroids = np.zeros((len(names), embeddings.shape[1]))
    for k in range(len(names)):
        alone = (shares[:, k] >= ALONE * window) & (shares.sum(axis=1) - shares[:, k] < OTHERS)
        if alone.any():
            mean = embeddings[alone].mean(axis=0)
            centroids[k] = mean / np.linalg.norm(mean)
    # A speaker with no window of its own has no centroid: its speech is confusion.
    labels = np.argmax(embeddings @ centroids.T, axis=1)
    centres = (np.arange(frames) + 0.5) * GRID * SAMPLE_RATE
    votes = stream._membership(centres, stops, labels, len(names))
    chosen = np.argmax(votes, axis=1)
    speech = speaking.any(axis=1)
    right = speaking[np.arange(frames), chosen]
    return Score(speech=heard.sum() * GRID,
                 missed=(heard[speech] - 1).sum() * GRID,
                 confused=(speech & ~right).sum() * GRID)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="eval sets (audio + reference.rttm)")
    parser.add_argument("--shift", default="0",
                        help="start points in seconds, comma-separated (audio rotated left)")
    args = parser.parse_args(argv)
    shifts = [float(value) for value in args.shift.split(",")]
    frontend = EmbeddedFrontend()
    print(f"{'file':22s} {'DER':>6s} {'miss':>7s} {'conf':>7s}   (no false alarm: speech "
          "is the reference's)")
    total = Score()
    for folder in args.folders:
        eval_set = load_eval_set(folder)
        in_set = Score()
        for uri in sorted(eval_set.audio):
            audio = load_audio(eval_set.audio[uri])
            for shift in shifts:
                samples, applied = rotate_samples(audio, shift)
                reference = rotate_segments(eval_set.reference[uri], applied,
                                            len(samples) / SAMPLE_RATE)
                score = bound(frontend, samples, reference)
                in_set.add(score)
                print(score.row(f"{eval_set.name}/{uri}@{shift:g}"), flush=True)
        print(in_set.row(f"{eval_set.name}/TOTAL"))
        total.add(in_set)
    print(total.row("TOTAL"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
