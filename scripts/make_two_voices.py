"""Make tests/data/two_voices.wav and .rttm: a synthetic two-voice conversation.

Needs espeak-ng (Debian package ``espeak-ng``). The committed fixture was made with:
    python scripts/make_two_voices.py tests/data/two_voices
"""
from __future__ import annotations

import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

from streamer.audio import resample

VOICES = {"alice": ["-v", "en-us+f3", "-p", "70", "-s", "165"],
          "bob": ["-v", "en-gb+m3", "-p", "25", "-s", "150"]}
LINES = [
    ("alice", "Good morning everyone, thanks for joining the weekly planning meeting today."),
    ("bob", "Morning. I have a short update about the server migration and the new database."),
    ("alice", "Great, please go ahead, and tell us whether the deadline is still realistic."),
    ("bob", "We moved most services last week. Two of them still need more testing on staging."),
    ("alice", "Understood. Can we finish those tests before Thursday afternoon?"),
    ("bob", "Yes, I think so, if the network team reviews the firewall rules tomorrow."),
    ("alice", "Perfect. Then let us meet again on Friday to confirm everything is done."),
]
PAUSES = [0.4, 0.7, 0.3, 0.9, 0.5, 0.6, 0.0]


def speak(voice: list[str], text: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as handle:
        subprocess.run(["espeak-ng", *voice, "-w", handle.name, text], check=True)
        samples, rate = sf.read(handle.name, dtype="float32")
    samples = resample(samples, rate)
    voiced = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[voiced[0]: voiced[-1] + 1] * 0.8


def main(stem: str) -> None:
    pieces, rttm, t = [np.zeros(8000, np.float32)], [], 0.5
    for (speaker, text), pause in zip(LINES, PAUSES):
        audio = speak(VOICES[speaker], text)
        rttm.append(f"SPEAKER {stem.rsplit('/', 1)[-1]} 1 {t:.3f} {len(audio) / 16000:.3f} "
                    f"<NA> <NA> {speaker} <NA> <NA>\n")
        pieces += [audio, np.zeros(int(pause * 16000), np.float32)]
        t += len(audio) / 16000 + pause
    pieces.append(np.zeros(8000, np.float32))
    sf.write(f"{stem}.wav", np.concatenate(pieces), 16000, subtype="PCM_16")
    with open(f"{stem}.rttm", "w", encoding="utf-8") as out:
        out.writelines(rttm)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/two_voices")
