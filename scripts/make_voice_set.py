#!/usr/bin/env python
"""Make a set of synthetic conversations in which every voice sounds the same in every file.

    python scripts/make_voice_set.py OUT [--files 6] [--seed 0]

Identification compares a voice with its voiceprint from another recording, so a test of
it needs voices that stay themselves across files, as a person's voice does. The
conversations of ``../shared/eval/synth`` give each voice another pitch in each file (their
pitches are spread apart per conversation), and GE2E then puts one voice in two files
farther apart than two different voices. Here each of six espeak-ng voices keeps one
variant, pitch and speed everywhere; each file holds 3 or 4 of them in 60-80 s of turns with
0.2-0.8 s pauses and light noise. Writes ``OUT/voices-NN.wav``, ``OUT/reference.rttm`` and
``OUT/reference.uem``, ready for ``scripts/identification.py OUT`` and ``streamer eval``.

Needs espeak-ng (Debian package ``espeak-ng``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import soundfile as sf

from make_two_voices import speak  # scripts/ is on sys.path when this runs as a script
from streamer.audio import SAMPLE_RATE

#: name -> espeak-ng options: variant, pitch (0-99) and speed, the same in every file.
VOICES = {
    "ava": ["-v", "en-gb+Alicia", "-p", "72", "-s", "160"],
    "lin": ["-v", "en-gb+linda", "-p", "50", "-s", "150"],
    "ste": ["-v", "en-gb+steph", "-p", "85", "-s", "170"],
    "ada": ["-v", "en-us+Adam", "-p", "30", "-s", "155"],
    "dav": ["-v", "en-us+david", "-p", "45", "-s", "165"],
    "pau": ["-v", "en-us+paul", "-p", "20", "-s", "145"],
}
SENTENCES = [
    "Good morning everyone, thanks for joining the weekly planning meeting today.",
    "I have a short update about the server migration and the new database.",
    "Please go ahead, and tell us whether the deadline is still realistic.",
    "We moved most services last week, two of them still need more testing.",
    "Can we finish those tests before Thursday afternoon?",
    "Yes, if the network team reviews the firewall rules tomorrow.",
    "Then let us meet again on Friday to confirm everything is done.",
    "The customer asked for a demo of the reporting feature next month.",
    "I think the design is ready, but the documentation is still missing.",
    "Who is going to write the release notes this time?",
    "I can take that, as long as someone checks the numbers with me.",
    "The budget for the second quarter was approved yesterday evening.",
    "That is good news, we can hire the two engineers we talked about.",
    "Let me share my screen so that everybody can see the new schedule.",
    "The first milestone moves by one week because of the holidays.",
    "Do we have any feedback from the pilot users in the north office?",
    "They liked the new interface, but the search is still too slow.",
    "We should profile the search service before we change anything else.",
    "I agree, measuring first will save us a lot of guessing.",
    "Could you send me the logs from last night when you have a minute?",
    "Sure, I will upload them to the shared folder after this call.",
    "One more thing, the office will be closed on Monday for maintenance.",
    "Then I suggest we keep the meeting online next week as well.",
    "Fine by me, I will update the invitation with the new link.",
    "Before we close, does anyone have a question about the plan?",
    "Not from my side, the priorities are clear now.",
    "Thanks everyone, I will send a short summary by email this afternoon.",
    "The test environment was down for an hour this morning.",
    "It was a certificate that expired, it is renewed for two years now.",
    "We should add a reminder to the calendar so it does not happen again.",
]


def conversation(uri: str, voices: list[str], rng: np.random.Generator,
                 seconds: float) -> tuple[np.ndarray, list[str]]:
    pieces, rttm, t, last = [np.zeros(SAMPLE_RATE // 2, np.float32)], [], 0.5, None
    # Every voice speaks early (at least one turn each), then turns go to another voice.
    order = list(rng.permutation(voices))
    while t < seconds:
        speaker = order.pop(0) if order else rng.choice([v for v in voices if v != last])
        audio = speak(VOICES[speaker], str(rng.choice(SENTENCES)))
        rttm.append(f"SPEAKER {uri} 1 {t:.3f} {len(audio) / SAMPLE_RATE:.3f} <NA> <NA> "
                    f"{speaker} <NA> <NA>\n")
        pause = float(rng.uniform(0.2, 0.8))
        pieces += [audio, np.zeros(int(pause * SAMPLE_RATE), np.float32)]
        t += len(audio) / SAMPLE_RATE + pause
        last = speaker
    samples = np.concatenate(pieces + [np.zeros(SAMPLE_RATE // 2, np.float32)])
    samples += rng.normal(0.0, 0.002, samples.shape).astype(np.float32)  # light noise
    return samples, rttm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    os.makedirs(args.out, exist_ok=True)
    names = sorted(VOICES)
    rttm, uem = [], []
    for index in range(args.files):
        uri = f"voices-{index:02d}"
        voices = sorted(rng.choice(names, size=int(rng.integers(3, 5)), replace=False))
        samples, lines = conversation(uri, voices, rng, float(rng.uniform(60, 80)))
        sf.write(os.path.join(args.out, uri + ".wav"), samples, SAMPLE_RATE, subtype="PCM_16")
        rttm += lines
        uem.append(f"{uri} 1 0.000 {len(samples) / SAMPLE_RATE:.3f}\n")
        print(f"{uri}: {', '.join(voices)}, {len(samples) / SAMPLE_RATE:.1f} s", flush=True)
    with open(os.path.join(args.out, "reference.rttm"), "w", encoding="utf-8") as out:
        out.writelines(rttm)
    with open(os.path.join(args.out, "reference.uem"), "w", encoding="utf-8") as out:
        out.writelines(uem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
