"""In-memory signals: diarize_array takes any rate, integer PCM and channels; feed refuses
what it would otherwise misread."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamer.audio import AudioFile, float_samples, prepare_samples
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.errors import AudioFormatError
from streamer.filemode import diarize_file
from streamer.models.embedded import EmbeddedFrontend

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def frontend() -> EmbeddedFrontend:
    return EmbeddedFrontend()


@pytest.fixture(scope="module")
def voices() -> tuple[np.ndarray, int]:
    samples, rate = sf.read(DATA / "two_voices.wav", dtype="float32")
    assert rate == 16000
    return samples, rate


def same_turns(a, b, tolerance: float = 0.1) -> bool:
    return len(a) == len(b) and all(
        x.speaker == y.speaker and abs(x.start - y.start) <= tolerance
        and abs(x.end - y.end) <= tolerance for x, y in zip(a, b))


def test_float_int16_and_resampled_signals_give_the_turns_of_file_mode(frontend, voices):
    samples, rate = voices
    with AudioFile(DATA / "two_voices.wav") as file:
        reference, _ = diarize_file(frontend, file, chunk=5.0)
    assert len({t.speaker for t in reference}) == 2
    as_float, _ = diarize_array(frontend, samples, chunk=5.0)
    assert as_float == reference
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    as_int16, _ = diarize_array(frontend, pcm, chunk=5.0)
    assert same_turns(as_int16, reference)
    high = soxr.resample(samples, rate, 44100, quality="HQ").astype(np.float32)
    at_44k, _ = diarize_array(frontend, high, chunk=5.0, sample_rate=44100)
    assert same_turns(at_44k, reference)
    # the same signal taken at 16 kHz (the old behaviour) is a different, wrong stream
    wrong, _ = diarize_array(frontend, high, chunk=5.0)
    assert not same_turns(wrong, reference)


def test_channels_on_either_axis_are_averaged(frontend, voices):
    samples, _ = voices
    mono, _ = diarize_array(frontend, samples, chunk=5.0)
    first = np.stack([samples, samples])  # (channels, time), as pyannote lays it out
    last = first.T.copy()  # (time, channels), as soundfile reads it
    assert diarize_array(frontend, first, chunk=5.0)[0] == mono
    assert diarize_array(frontend, last, chunk=5.0)[0] == mono


def test_integer_pcm_is_scaled_by_its_width():
    assert float_samples(np.array([-32768, 16384], np.int16)).tolist() == [-1.0, 0.5]
    assert float_samples(np.array([2 ** 30], np.int32)).tolist() == [0.5]
    assert float_samples(np.array([0, 128, 192], np.uint8)).tolist() == [-1.0, 0.0, 0.5]
    assert float_samples(np.array([-64], np.int8)).tolist() == [-0.5]
    assert float_samples(np.array([3.0, -0.25])).tolist() == [1.0, -0.25]  # clipped


@pytest.mark.parametrize("samples, rate, message", [
    (np.ones(10, bool), 16000, "dtype bool"),
    (np.ones(10, complex), 16000, "dtype complex"),
    (np.ones(10, np.int64), 16000, "dtype int64"),
    (np.array(["a", "b"]), 16000, "dtype <U1"),
    (np.zeros((2, 3, 100), np.float32), 16000, r"shape \(2, 3, 100\)"),
    (np.zeros((40, 50), np.float32), 16000, "at most 32 channels"),
    (np.zeros(()), 16000, r"shape \(\)"),
    (np.zeros(100, np.float32), 0, "sample_rate"),
    (np.zeros(100, np.float32), 44100.5, "sample_rate"),
    (np.zeros(100, np.float32), True, "sample_rate"),
    (np.array([0.1, np.nan], np.float32), 16000, "NaN or infinite"),
])
def test_what_cannot_be_audio_is_refused_with_its_reason(samples, rate, message):
    with pytest.raises(AudioFormatError, match=message):
        prepare_samples(samples, rate)


def test_feed_refuses_integer_pcm_and_channels_instead_of_misreading_them(frontend):
    engine = StreamingDiarizer(frontend)
    with pytest.raises(AudioFormatError, match=r"int16.*samples / 32768"):
        engine.feed(np.zeros(1600, np.int16))
    with pytest.raises(AudioFormatError, match="one channel"):
        engine.feed(np.zeros((2, 1600), np.float32))
    assert engine.position == 0.0
    engine.feed(np.zeros((1600, 1), np.float32))  # a single column is one channel
    assert engine.position == 0.1
