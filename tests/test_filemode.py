"""File mode: a file streamed block by block gives the turns of the whole signal."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from streamer.audio import AudioFile
from streamer.engine import diarize_array
from streamer.filemode import diarize_file, rechunk
from tests.fakes import fake_frontend, tone_conversation

A, B = 300.0, 700.0


def test_rechunk_gives_fixed_chunks_whatever_the_blocks():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=10_007).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, len(signal)), 40, replace=False))
    blocks = np.split(signal, cuts)
    chunks = list(rechunk(blocks, 1000))
    assert [len(c) for c in chunks] == [1000] * 10 + [7]
    np.testing.assert_array_equal(np.concatenate(chunks), signal)
    assert list(rechunk([], 1000)) == []


@pytest.mark.parametrize("rate", [16000, 32000])
def test_file_mode_turns_equal_those_of_the_whole_signal(tmp_path, rate):
    audio = tone_conversation([(None, 1.0), (A, 4.0), (None, 0.5), (B, 6.0), (A, 3.0),
                               (None, 1.0), (B, 5.5)], sr=rate)
    path = tmp_path / "talk.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    with AudioFile(path, block_seconds=1.3) as file:
        signal = np.concatenate(list(file.blocks()))
    expected, _ = diarize_array(fake_frontend(), signal, chunk=5.0)
    done = []
    with AudioFile(path, block_seconds=1.3) as file:
        turns, engine = diarize_file(fake_frontend(), file, chunk=5.0, progress=done.append)
    assert turns == expected and len({t.speaker for t in turns}) == 2
    assert engine.position == len(signal) / 16000
    assert done == sorted(done) and done[-1] == len(signal)
