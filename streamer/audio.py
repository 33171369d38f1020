"""Audio decoding: raw PCM frames from the wire, and audio files for file mode.

Everything ends up as 16 kHz mono float32, the rate every model here runs at.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from typing import Any, Iterator

import numpy as np
import soxr

from streamer.errors import AudioFileError, AudioFormatError

SAMPLE_RATE = 16000
ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 48000
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".au", ".w64", ".rf64"}


def to_mono(samples: np.ndarray) -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` -> ``(samples,)`` float32, by averaging."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2 and samples.shape[1] == 1:
        return samples[:, 0]
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    return samples


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole signal (high quality, no edge effects beyond the filter)."""
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    return soxr.resample(samples.astype(np.float32), rate, target, quality="HQ").astype(np.float32)


def check_finite(samples: np.ndarray, what: str = "audio") -> None:
    if not np.isfinite(samples).all():
        raise AudioFormatError(f"{what} contains NaN or infinite samples")


def clip_samples(samples: np.ndarray, what: str = "audio") -> np.ndarray:
    """Float samples as float32 within full scale [-1, 1]; NaN or infinity is refused.

    Finite values beyond full scale (a float WAV with 1e30 in it) are clipped rather than
    refused: the models square and sum samples, so such values overflow to inf and NaN,
    which would poison every later step of the stream.
    """
    samples = np.asarray(samples)
    check_finite(samples, what)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


#: Most channels an in-memory signal may have (a longer axis is the time axis).
MAX_CHANNELS = 32


def float_samples(samples: Any, what: str = "samples") -> np.ndarray:
    """A number array as float samples in full scale: integer PCM is scaled (int16 by
    1/32768, int32 by 1/2**31, int8 by 1/128; uint8 is offset by 128), floats are kept
    and clipped to [-1, 1]. Anything else (bool, complex, strings, objects) is refused."""
    array = np.asarray(samples)
    kind = array.dtype.kind
    if kind == "i" and array.dtype.itemsize <= 4:
        return (array.astype(np.float64) / 2.0 ** (8 * array.dtype.itemsize - 1)).astype(np.float32)
    if array.dtype == np.uint8:
        return ((array.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if kind != "f":
        raise AudioFormatError(
            f"{what} must be float (full scale [-1, 1]) or int8/int16/int32/uint8 PCM, "
            f"got dtype {array.dtype}")
    return clip_samples(array, what)


def prepare_samples(samples: Any, sample_rate: int, what: str = "samples") -> np.ndarray:
    """An in-memory signal of any supported dtype, rate and layout as 16 kHz mono float32.

    ``samples`` is ``(time,)`` or two-dimensional with up to :data:`MAX_CHANNELS` channels
    on either axis (``(channels, time)`` as pyannote and torchaudio lay them out, or
    ``(time, channels)`` as soundfile does: the shorter axis is the channels); channels
    are averaged. ``sample_rate`` is the signal's rate, resampled to 16 kHz.

    Raises:
        AudioFormatError: a dtype, shape or rate that cannot be audio, or NaN/inf.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not 1000 <= sample_rate <= 384000:
        raise AudioFormatError(
            f"sample_rate must be a whole number of Hz between 1000 and 384000, "
            f"got {sample_rate!r}")
    array = float_samples(samples, what)
    if array.ndim == 2 and min(array.shape) <= MAX_CHANNELS:
        array = to_mono(array if array.shape[1] <= array.shape[0] else array.T)
    elif array.ndim != 1:
        raise AudioFormatError(
            f"{what} must be (time,) or (channels, time) with at most {MAX_CHANNELS} "
            f"channels, got shape {array.shape}")
    return resample(array, int(sample_rate))


class PcmDecoder:
    """Decodes binary PCM frames of one stream to 16 kHz mono float32, statefully.

    Frames may have any size as long as they hold whole samples (all channels). The
    resampler keeps its state across frames, so chunking does not change the result.
    """

    def __init__(self, sample_rate: int, encoding: str = "pcm_s16le", channels: int = 1):
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int):
            raise AudioFormatError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
        if not MIN_RATE <= sample_rate <= MAX_RATE:
            raise AudioFormatError(
                f"sample_rate must be between {MIN_RATE} and {MAX_RATE} Hz, got {sample_rate}")
        if encoding not in ENCODINGS:
            raise AudioFormatError(
                f"encoding must be one of {', '.join(sorted(ENCODINGS))}, got {encoding!r}")
        if isinstance(channels, bool) or channels not in (1, 2):
            raise AudioFormatError(f"channels must be 1 or 2, got {channels!r}")
        self.sample_rate = sample_rate
        self.encoding = encoding
        self.channels = channels
        self.dtype = ENCODINGS[encoding]
        self.frame_bytes = self.dtype.itemsize * channels
        self._resampler = (None if sample_rate == SAMPLE_RATE else
                           soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32",
                                               quality="HQ"))
        self.samples_in = 0

    def decode(self, data: bytes) -> np.ndarray:
        """Decode one binary frame; raises :class:`AudioFormatError` on a bad frame."""
        if len(data) % self.frame_bytes:
            raise AudioFormatError(
                f"frame of {len(data)} bytes does not hold whole samples "
                f"({self.frame_bytes} bytes per sample of {self.channels} channel(s), "
                f"{self.encoding})")
        samples = to_mono(float_samples(np.frombuffer(data, dtype=self.dtype), "frame")
                          .reshape(-1, self.channels))
        self.samples_in += len(samples)
        if self._resampler is None:
            return samples
        return self._resampler.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        """The resampler's last samples, at the end of the stream."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Read a whole audio file as 16 kHz mono float32 (see :class:`AudioFile`, which
    decodes it block by block instead)."""
    with AudioFile(path) as audio:
        return np.concatenate([np.zeros(0, np.float32), *audio.blocks()])


class AudioFile:
    """An audio file decoded block by block to 16 kHz mono float32.

    wav/flac/ogg (and the other formats libsndfile reads) are decoded in-process; mp3, m4a
    and the rest go through ``ffmpeg`` when it is installed. Opening checks the file and
    reads its header (with ffmpeg: its first block), so that a bad file fails before any
    model is loaded; :meth:`blocks` then decodes ``block_seconds`` at a time, so memory
    does not grow with the file's length. Samples beyond full scale are clipped to [-1, 1].

    Raises:
        AudioFileError: missing or unreadable file, no samples, or no decoder for it.
        AudioFormatError: NaN or infinite samples (from :meth:`blocks`, where they are).
    """

    def __init__(self, path: str | os.PathLike, block_seconds: float = 10.0):
        self.path = os.fspath(path)
        _check_readable(self.path)
        self._soundfile = self._ffmpeg = None
        suffix = os.path.splitext(self.path)[1].lower()
        try:
            self._soundfile = _open_soundfile(self.path)
        except AudioFileError:
            if suffix in SOUNDFILE_SUFFIXES:
                raise
            self._ffmpeg = _FfmpegReader(self.path, int(block_seconds * SAMPLE_RATE))
        if self._soundfile is not None:
            self.rate = int(self._soundfile.samplerate)
            #: Samples the file will give at 16 kHz (None when only ffmpeg knows).
            self.expected_samples: int | None = int(
                self._soundfile.frames * SAMPLE_RATE / self.rate)
            if self._soundfile.frames <= 0:
                self.close()
                raise AudioFileError(f"{self.path}: the file holds no audio samples")
        else:
            self.rate, self.expected_samples = SAMPLE_RATE, None
        self.block_frames = max(1, int(block_seconds * self.rate))

    def blocks(self) -> Iterator[np.ndarray]:
        """16 kHz mono float32 blocks, in order, until the end of the file."""
        resampler = (None if self.rate == SAMPLE_RATE else soxr.ResampleStream(
            self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"))
        offset = 0
        for raw in self._raw_blocks():
            finite = np.isfinite(raw).reshape(len(raw), -1).all(axis=1)
            if not finite.all():
                at = (offset + int(np.argmin(finite))) / self.rate
                raise AudioFormatError(
                    f"{self.path} contains NaN or infinite samples (the first at {at:.3f} s)")
            samples = to_mono(np.clip(raw, -1.0, 1.0))
            offset += len(raw)
            if resampler is not None:
                samples = resampler.resample_chunk(samples, last=False)
            if len(samples):
                yield samples
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail

    def _raw_blocks(self) -> Iterator[np.ndarray]:
        if self._ffmpeg is not None:
            yield from self._ffmpeg.blocks()
            return
        import soundfile

        while True:
            try:
                block = self._soundfile.read(self.block_frames, dtype="float32", always_2d=True)
            except (RuntimeError, soundfile.LibsndfileError, ValueError) as error:
                raise AudioFileError(
                    f"{self.path}: cannot decode audio ({_first_line(error)})") from None
            if not len(block):
                return
            yield block

    def close(self) -> None:
        if self._soundfile is not None:
            self._soundfile.close()
        if self._ffmpeg is not None:
            self._ffmpeg.close()

    def __enter__(self) -> "AudioFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_readable(path: str) -> None:
    """Say what is wrong with a path that cannot be an audio file we can read."""
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and info.st_size:
            open(path, "rb").close()
    except PermissionError:
        raise AudioFileError(f"{path}: permission denied") from None
    except (FileNotFoundError, NotADirectoryError):
        raise AudioFileError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        raise AudioFileError(f"{path}: cannot open it ({_first_line(error)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioFileError(f"{path}: is a folder, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        raise AudioFileError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise AudioFileError(f"{path}: empty file")


def _open_soundfile(path: str) -> Any:
    import soundfile

    try:
        return soundfile.SoundFile(path)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as error:
        raise AudioFileError(f"{path}: cannot decode audio ({_first_line(error)})") from None


class _FfmpegReader:
    """``ffmpeg`` decoding to 16 kHz mono float32 on a pipe, read block by block."""

    def __init__(self, path: str, block_samples: int):
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise AudioFileError(
                f"{path}: this format needs ffmpeg, which is not installed "
                "(install it, e.g. 'apt-get install ffmpeg', or convert the file to wav/flac)")
        self.path = path
        self.block_bytes = 4 * block_samples
        command = [ffmpeg, "-nostdin", "-v", "error", "-i", path, "-f", "f32le", "-ac", "1",
                   "-ar", str(SAMPLE_RATE), "-"]
        self._errors = tempfile.TemporaryFile()  # a pipe could fill up and stall ffmpeg
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._errors)
        self._first = self._read()
        if len(self._first) == 0:
            self._finish()
            self.close()
            raise AudioFileError(f"{path}: the file holds no audio samples")

    def _read(self) -> np.ndarray:
        data = self._process.stdout.read(self.block_bytes)
        if len(data) < self.block_bytes:
            self._finish()
        return np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4")

    def _finish(self) -> None:
        """At the end of ffmpeg's output: raise if it failed."""
        if self._process.wait() != 0:
            self._errors.seek(0)
            message = self._errors.read().decode(errors="replace").strip().splitlines()
            self.close()
            raise AudioFileError(
                f"{self.path}: ffmpeg cannot decode it ({message[-1] if message else 'error'})")

    def blocks(self) -> Iterator[np.ndarray]:
        block, self._first = self._first, np.zeros(0, np.float32)
        while len(block):
            yield block
            block = self._read() if self._process.returncode is None else block[:0]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._errors.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
