"""Decoding: wire PCM frames and audio files, with their edge cases."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import tracemalloc
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import soundfile as sf
import soxr

from streamer.audio import AudioFile, PcmDecoder, load_audio, to_mono
from streamer.errors import AudioFileError, AudioFormatError

NOBODY = 65534


def unprivileged(call: Callable[[], object]) -> str:
    """What ``call()`` returns (as text), or the message it raises, when an unprivileged
    user runs it: in a forked child that drops root, since root reads any file whatever
    its mode. Everything ``call`` needs must be imported already."""
    if os.geteuid() != 0:
        try:
            return str(call())
        except Exception as error:  # noqa: BLE001 - the message is the result
            return str(error)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = str(call())
            except Exception as error:  # noqa: BLE001
                result = str(error)
            os.write(write, result.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pipe.read().decode()
    assert os.waitpid(pid, 0)[1] == 0, "the unprivileged child failed"
    return result


@contextlib.contextmanager
def unreadable_copies(source: Path) -> Iterator[tuple[Path, Path, Path]]:
    """Copies of ``source``: one that an unprivileged user can read, then two it cannot:
    one with mode 000 in an open folder, one inside a folder it may not enter."""
    root = Path(tempfile.mkdtemp(prefix="streamer-"))
    try:
        root.chmod(0o755)
        readable = root / source.name
        shutil.copyfile(source, readable)
        readable.chmod(0o644)
        locked = root / f"locked{source.suffix}"
        shutil.copyfile(source, locked)
        locked.chmod(0)
        hidden = root / "hidden" / source.name
        hidden.parent.mkdir()
        shutil.copyfile(source, hidden)
        hidden.parent.chmod(0)
        yield readable, locked, hidden
    finally:
        (root / "hidden").chmod(stat.S_IRWXU)
        shutil.rmtree(root)


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


def test_unreadable_files_say_permission_denied(tmp_path):
    path = tmp_path / "talk.wav"
    sf.write(path, tone(16000), 16000)
    with unreadable_copies(path) as (readable, locked, hidden):
        assert unprivileged(lambda: len(load_audio(readable))) == "16000"
        for unreadable in (locked, hidden):
            assert unprivileged(lambda: load_audio(unreadable)) == f"{unreadable}: permission denied"
    with pytest.raises(AudioFileError, match="is a folder"):
        load_audio(tmp_path)


@pytest.mark.parametrize("rate, channels, subtype", [
    (16000, 1, "PCM_16"), (44100, 2, "PCM_16"), (22050, 1, "FLOAT"), (8000, 2, "PCM_24"),
])
def test_blocks_are_the_whole_file_decoded_at_once(tmp_path, rate, channels, subtype):
    """Block by block, the samples are exactly those of decoding the whole file."""
    signal = np.stack([tone(rate, 2.3, 300 + 200 * c) for c in range(channels)], axis=1)
    path = tmp_path / "talk.wav"
    sf.write(path, signal, rate, subtype=subtype)
    whole, _ = sf.read(path, dtype="float32", always_2d=True)
    expected = to_mono(whole)
    if rate != 16000:
        expected = soxr.resample(expected, rate, 16000, quality="HQ")
    with AudioFile(path, block_seconds=0.37) as audio:
        blocks = list(audio.blocks())
        assert abs(audio.expected_samples - len(expected)) <= 1
    assert len(blocks) > 5
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


def test_decoding_memory_does_not_grow_with_the_file(tmp_path):
    path = tmp_path / "long.wav"
    ten_seconds = np.stack([tone(22050, 10.0)] * 2, axis=1)
    with sf.SoundFile(path, "w", 22050, 2, subtype="PCM_16") as out:
        for _ in range(30):
            out.write(ten_seconds)  # 5 minutes: 53 MB as float32 at once
    tracemalloc.start()
    try:
        with AudioFile(path) as audio:
            total = sum(len(block) for block in audio.blocks())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert abs(total - 300 * 16000) < 100
    assert peak < 8 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB to decode 5 minutes"


def test_nan_is_reported_with_its_time(tmp_path):
    samples = tone(16000, 3.0)
    samples[16000 * 2 + 8000] = np.inf
    path = tmp_path / "inf.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with AudioFile(path, block_seconds=1.0) as audio:
        blocks = audio.blocks()
        assert len(next(blocks)) == 16000
        with pytest.raises(AudioFormatError, match=r"NaN or infinite samples \(the first at 2\.500 s\)"):
            list(blocks)


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch) -> Callable[[str], None]:
    """An ``ffmpeg`` on PATH that runs the given shell lines (its arguments in "$@")."""
    folder = tmp_path / "bin"
    folder.mkdir()

    def install(script: str) -> None:
        program = folder / "ffmpeg"
        program.write_text(f"#!/bin/sh\n{script}\n")
        program.chmod(0o755)

    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return install


def test_other_formats_stream_through_ffmpeg(tmp_path, fake_ffmpeg):
    raw = tmp_path / "decoded.f32"
    expected = np.clip(tone(16000, 25.0) * 3, -2, 2).astype("<f4")  # beyond full scale too
    raw.write_bytes(expected.tobytes())
    fake_ffmpeg(f'case "$*" in *talk.mp3*" -ar 16000 -"*) exec cat {raw} ;; esac; exit 9')
    path = tmp_path / "talk.mp3"
    path.write_bytes(b"ID3\x03\x00\x00\x00" + b"\x00" * 100)
    with AudioFile(path, block_seconds=2.0) as audio:
        assert audio.expected_samples is None
        blocks = list(audio.blocks())
    assert [len(b) for b in blocks] == [32000] * 12 + [16000]
    np.testing.assert_array_equal(np.concatenate(blocks), np.clip(expected, -1, 1))


@pytest.mark.parametrize("script, message", [
    ('echo "Invalid data found when processing input" >&2; exit 1',
     "ffmpeg cannot decode it (Invalid data found when processing input)"),
    ("exit 0", "no audio samples"),
    ('head -c 400000 /dev/zero; echo "Error while decoding stream" >&2; exit 1',
     "ffmpeg cannot decode it (Error while decoding stream)"),
], ids=["refused", "empty", "fails-midway"])
def test_ffmpeg_failures_are_reported(tmp_path, fake_ffmpeg, script, message):
    fake_ffmpeg(script)
    path = tmp_path / "talk.m4a"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(AudioFileError, match=re.escape(message)):
        with AudioFile(path, block_seconds=1.0) as audio:
            list(audio.blocks())


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
