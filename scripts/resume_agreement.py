#!/usr/bin/env python
"""How well a resumed stream keeps the labels of an uncut one.

    python scripts/resume_agreement.py ../shared/eval/synth ../shared/eval

Each file is streamed whole, and again cut at a random point (seeded, between 20 % and
80 % of the file): the first part's engine state is restored into a new engine that
streams the rest (times moved by the cut), as a client reconnecting with ``start.resume``
would. With ``--context``, the new engine is also primed with the first part's audio
context, as a stream resumed by ``resume_id`` after a drain is; with ``--client-context
SECONDS``, with the last SECONDS of audio before the cut, as a client that sends its own
copy in ``start.context`` does. Prints, per folder and
in total, the share of the uncut stream's speech after the cut whose label the resumed
stream gives too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from streamer.audio import load_audio
from streamer.config import DEFAULT_LATENCY, StreamConfig
from streamer.engine import StreamingDiarizer, diarize_chunks
from streamer.presets import load_frontend


def labels_on_grid(turns, start: float, end: float, step: float = 0.01) -> np.ndarray:
    times = np.arange(start, end, step)
    labels = np.full(len(times), "", dtype=object)
    for turn in turns:
        labels[(times >= turn.start) & (times < turn.end)] = turn.speaker
    return labels


def agreement(frontend, samples: np.ndarray, cut: int, context: bool = False,
              client_context: float = 0.0) -> tuple[float, float]:
    chunks = lambda x: (x[i: i + 8000] for i in range(0, len(x), 8000))  # noqa: E731
    live = StreamConfig(latency=DEFAULT_LATENCY)  # the streams a server resumes are live
    whole, _ = diarize_chunks(frontend, chunks(samples), live)
    _, first = diarize_chunks(frontend, chunks(samples[:cut]), live)
    state = json.loads(json.dumps(first.state()))  # as it travels
    resumed = StreamingDiarizer(frontend)
    resumed.restore(state)
    if context:
        resumed.prime(first.context())
    elif client_context:
        resumed.prime(samples[max(0, cut - int(client_context * 16000)):cut])
    later = [t for chunk in chunks(samples[cut:]) for t in resumed.feed(chunk) if t.final]
    later += [t for t in resumed.flush() if getattr(t, "final", False)]
    offset, end = cut / 16000, len(samples) / 16000
    later = [type(t)(t.id, t.speaker, t.start + offset, t.end + offset, True) for t in later]
    truth = labels_on_grid(whole, offset, end)
    guess = labels_on_grid(later, offset, end)
    speech = truth != ""
    return float((truth[speech] == guess[speech]).sum() * 0.01), float(speech.sum() * 0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="embedded", help="model preset (default embedded)")
    parser.add_argument("--context", action="store_true",
                        help="prime the resumed stream with the engine's audio context")
    parser.add_argument("--client-context", type=float, default=0.0, metavar="SECONDS",
                        help="prime the resumed stream with the last SECONDS of audio "
                             "before the cut")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    frontend = load_frontend(args.preset)
    rng = np.random.default_rng(args.seed)
    total_same = total = 0.0
    for folder in args.folders:
        same = speech = 0.0
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".wav"):
                continue
            samples = load_audio(os.path.join(folder, name))
            cut = int(len(samples) * rng.uniform(0.2, 0.8))
            agree, spoken = agreement(frontend, samples, cut, args.context,
                                      args.client_context)
            print(f"  {name}: cut at {cut / 16000:.1f} s, same label for "
                  f"{100 * agree / max(spoken, 1e-9):.1f} % of {spoken:.1f} s", flush=True)
            same, speech = same + agree, speech + spoken
        print(f"{folder}: {100 * same / max(speech, 1e-9):.1f} % of {speech:.1f} s", flush=True)
        total_same, total = total_same + same, total + speech
    print(f"TOTAL: {100 * total_same / max(total, 1e-9):.1f} % of {total:.1f} s of speech "
          f"after the cut has the uncut stream's label")
    return 0


if __name__ == "__main__":
    sys.exit(main())
