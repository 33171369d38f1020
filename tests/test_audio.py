"""Decoding: wire PCM frames and audio files, with their edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from streamer.audio import PcmDecoder, load_audio
from streamer.errors import AudioFileError, AudioFormatError


def tone(rate: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_files_of_any_rate_come_out_at_16k_with_the_same_content(tmp_path, rate):
    path = tmp_path / f"tone{rate}.wav"
    sf.write(path, tone(rate), rate, subtype="PCM_16")
    samples = load_audio(path)
    assert samples.dtype == np.float32
    assert abs(len(samples) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(samples[2000:14000]))
    assert np.argmax(spectrum) * 16000 / 12000 == pytest.approx(440, abs=2)


def test_stereo_files_are_downmixed(tmp_path):
    left, right = tone(16000, freq=300), tone(16000, freq=700)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], axis=1), 16000)
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-3)


def test_ogg_files_are_read(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, tone(22050), 22050, format="OGG", subtype="VORBIS")
    assert abs(len(load_audio(path)) - 16000) < 400


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"", "empty file"), (b"RIFF\x00\x00garbage-header-bytes", "cannot decode"),
])
def test_bad_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioFileError, match=message):
        load_audio(path)


def test_a_file_with_no_samples_is_refused(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioFileError, match="no audio samples"):
        load_audio(path)


def test_nan_samples_in_a_file_are_refused(tmp_path):
    samples = tone(16000)
    samples[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(AudioFormatError, match="NaN"):
        load_audio(path)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_samples_beyond_full_scale_are_clipped(tmp_path, rate):
    samples = tone(rate, 2.0)
    spike = slice(rate, rate + rate // 20)  # 50 ms of +-1e30
    samples[spike] = np.where(np.arange(rate // 20) % 2, 1e30, -1e30)
    path = tmp_path / "spike.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    decoded = load_audio(path)
    assert np.isfinite(decoded).all() and np.abs(decoded).max() <= 1.0
    np.testing.assert_allclose(decoded[:15000], load_audio_of(tone(rate, 2.0), rate,
                                                             tmp_path)[:15000], atol=1e-6)


def load_audio_of(samples: np.ndarray, rate: int, folder) -> np.ndarray:
    path = folder / "clean.wav"
    sf.write(path, samples, rate, subtype="FLOAT")
    return load_audio(path)


def test_formats_without_ffmpeg_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    path = tmp_path / "talk.mp3"
    path.write_bytes(b"ID3\x03\x00\x00\x00" + b"\x00" * 100)
    with pytest.raises(AudioFileError, match="ffmpeg"):
        load_audio(path)


@pytest.mark.parametrize("rate, channels, encoding", [
    (16000, 1, "pcm_s16le"), (44100, 2, "pcm_s16le"), (8000, 1, "pcm_f32le"),
    (48000, 2, "pcm_f32le"),
])
def test_pcm_decoder_output_does_not_depend_on_frame_sizes(rate, channels, encoding):
    signal = np.stack([tone(rate, 0.5, 300)] * channels, axis=1)
    dtype = "<i2" if encoding == "pcm_s16le" else "<f4"
    raw = (signal * 32767).astype(dtype) if dtype == "<i2" else signal.astype(dtype)
    data = raw.tobytes()
    frame = raw.dtype.itemsize * channels
    whole = PcmDecoder(rate, encoding, channels)
    expected = np.concatenate([whole.decode(data), whole.flush()])
    pieces = PcmDecoder(rate, encoding, channels)
    cuts = [0, frame * 7, frame * 1000, frame * 1001, len(data)]
    got = np.concatenate([pieces.decode(data[a:b]) for a, b in zip(cuts, cuts[1:])]
                         + [pieces.flush()])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert abs(len(got) - 8000) <= 2
    assert np.abs(got[1000:7000]).max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("kwargs, message", [
    ({"sample_rate": 4000}, "sample_rate"), ({"sample_rate": 96000}, "sample_rate"),
    ({"sample_rate": 16000.5}, "sample_rate"), ({"encoding": "mp3"}, "encoding"),
    ({"channels": 3}, "channels"), ({"channels": 0}, "channels"),
])
def test_pcm_decoder_rejects_bad_formats(kwargs, message):
    values = {"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, **kwargs}
    with pytest.raises(AudioFormatError, match=message):
        PcmDecoder(**values)


def test_pcm_decoder_rejects_partial_samples_and_nan():
    decoder = PcmDecoder(16000, "pcm_s16le", 2)
    with pytest.raises(AudioFormatError, match="whole samples"):
        decoder.decode(b"\x00" * 6)
    f32 = PcmDecoder(16000, "pcm_f32le", 1)
    with pytest.raises(AudioFormatError, match="NaN"):
        f32.decode(np.array([0.1, np.inf], "<f4").tobytes())
    assert len(f32.decode(np.array([0.1, 0.2], "<f4").tobytes())) == 2


def test_pcm_decoder_clips_samples_beyond_full_scale():
    decoder = PcmDecoder(16000, "pcm_f32le", 2)
    frame = np.array([[1e30, 1e30], [-1e30, -3e38], [0.25, 0.75]], "<f4").tobytes()
    np.testing.assert_array_equal(decoder.decode(frame), [1.0, -1.0, 0.5])
    resampled = PcmDecoder(44100, "pcm_f32le", 1)
    spike = np.where(np.arange(4410) % 2, 1e30, -1e30).astype("<f4").tobytes()
    out = np.concatenate([resampled.decode(spike), resampled.flush()])
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.5
