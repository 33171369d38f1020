"""Audio decoding: raw PCM frames from the wire, and audio files for file mode.

Everything ends up as 16 kHz mono float32, the rate every model here runs at.
"""
from __future__ import annotations

import os
import shutil
import subprocess

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
    samples = np.asarray(samples, dtype=np.float32)
    check_finite(samples, what)
    return np.clip(samples, -1.0, 1.0)


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
        raw = np.frombuffer(data, dtype=self.dtype)
        if self.dtype.kind == "f":
            samples = clip_samples(raw, "frame")
        else:
            samples = raw.astype(np.float32) / 32768.0
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
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
    """Read an audio file as 16 kHz mono float32.

    wav/flac/ogg (and the other formats libsndfile reads) are decoded in-process; mp3, m4a
    and the rest go through ``ffmpeg`` when it is installed.

    Samples beyond full scale are clipped to [-1, 1].

    Raises:
        AudioFileError: missing or unreadable file, no samples, or no decoder for it.
        AudioFormatError: NaN or infinite samples.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioFileError(f"{path}: is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioFileError(f"{path}: empty file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SOUNDFILE_SUFFIXES:
        samples, rate = _read_soundfile(path)
    else:
        try:
            samples, rate = _read_soundfile(path)
        except AudioFileError:
            samples, rate = _read_ffmpeg(path), SAMPLE_RATE
    if samples.size == 0:
        raise AudioFileError(f"{path}: the file holds no audio samples")
    return resample(to_mono(clip_samples(samples, f"{path}")), rate)


def _read_soundfile(path: str) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, TypeError, ValueError) as error:
        raise AudioFileError(f"{path}: cannot decode audio ({_first_line(error)})") from None
    return samples, int(rate)


def _read_ffmpeg(path: str) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioFileError(
            f"{path}: this format needs ffmpeg, which is not installed "
            "(install it, e.g. 'apt-get install ffmpeg', or convert the file to wav/flac)")
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", path, "-f", "f32le", "-ac", "1",
               "-ar", str(SAMPLE_RATE), "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioFileError(f"{path}: ffmpeg cannot decode it ({message[-1] if message else 'error'})")
    return np.frombuffer(result.stdout, dtype="<f4").astype(np.float32)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
