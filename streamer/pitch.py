"""Voice pitch as a second cue for telling speakers apart, next to the embeddings.

Two voices can sit closer in an embedding space than one voice's turns do, yet speak at
clearly different pitches; one person's pitch, on the other hand, moves with intonation.
So pitch only counts where it is decisive: the engine compares each local speaker's pitch
(median F0 over its voiced frames, in semitones) with each global speaker's, measures the
difference in units of their own spreads, and adds a cost only past a margin of such
units (:func:`pitch_penalty`). Voices whose pitch spreads overlap, as most real speakers'
do, are left to the embeddings.

F0 is estimated with YIN (de Cheveigné and Kawahara, 2002) every 10 ms, on the audio the
engine already holds, whatever the front end.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from streamer.audio import SAMPLE_RATE

#: One F0 estimate every HOP samples (10 ms); estimate i is centred on sample i * HOP.
HOP = 160
#: Samples each estimate looks at (50 ms: two periods of the lowest F0).
FRAME = 800
#: Lowest and highest F0 looked for, Hz.
F0_MIN, F0_MAX = 60.0, 400.0
_MIN_LAG = int(SAMPLE_RATE // F0_MAX)
_MAX_LAG = int(math.ceil(SAMPLE_RATE / F0_MIN))
#: FFT length of the correlation. Only lags up to _MAX_LAG of the first FRAME - _MAX_LAG
#: samples are needed, and those never reach past the frame, so a circular correlation
#: over the frame's own length is already the linear one: no zero padding.
_FFT = FRAME
#: YIN's aperiodicity threshold: frames above it are unvoiced.
APERIODICITY = 0.2
#: Frames quieter than this RMS (about -60 dBFS) have no pitch.
MIN_RMS = 1e-3
#: A spread is never taken below this many semitones (a perfectly flat voice).
MIN_SPREAD = 0.3
#: Fewest voiced estimates for a pitch estimate of a speaker: fewer give medians too noisy
#: to set voices apart. The engine takes one estimate per model frame of a local speaker,
#: so this asks for 40 voiced frames: about 0.7 s of voiced speech at pyannote's 17 ms
#: frames, 1.3 s at the embedded preset's 32 ms, which low, rough voices (voiced in a
#: fifth of their speech) reach in a buffer where they speak 6 s or more. Taking every
#: 10 ms estimate instead (0.4 s) splits real speakers whose pitch moves between buffers
#: more than their spread within one.
MIN_VOICED = 40
#: Looser pitch groups that :func:`two_voices` may take for two voices when they stand far
#: apart for their width: each needs this many windows and a spread (standard deviation)
#: of at most ``WIDE_SPREAD`` semitones. With three voices in one cluster, one group of a
#: cut holds two of them and spreads past a single voice's width; a lively voice's
#: medians run on without such a gap. A pair of windows on the edge of one lively voice's
#: range can also stand apart from the rest, so a group needs three.
WIDE_LEAST = 3
WIDE_SPREAD = 2.0


def difference_function(frames: np.ndarray) -> np.ndarray:
    """YIN's difference function of each row of ``frames`` ``(count, FRAME)``:
    ``d[tau] = sum_{j < FRAME - _MAX_LAG} (x[j] - x[j + tau])**2`` for lags 0 to
    ``_MAX_LAG``, through one FFT correlation and running energies."""
    frames = np.asarray(frames, np.float64)
    width = FRAME - _MAX_LAG
    spectrum = np.fft.rfft(frames, _FFT)
    head = np.fft.rfft(frames[:, :width], _FFT)
    correlation = np.fft.irfft(np.conj(head) * spectrum, _FFT)[:, :_MAX_LAG + 1]
    energy = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames ** 2, axis=1)],
                            axis=1)
    lags = np.arange(_MAX_LAG + 1)
    difference = energy[:, [width]] + energy[:, lags + width] - energy[:, lags] \
        - 2 * correlation
    difference[:, 0] = 0.0
    return difference


def yin(audio: np.ndarray) -> np.ndarray:
    """F0 in Hz of each full FRAME of ``audio`` taken every HOP samples (frame i covers
    ``audio[i * HOP: i * HOP + FRAME]``); NaN where unvoiced."""
    audio = np.asarray(audio, np.float64)
    count = 1 + (len(audio) - FRAME) // HOP if len(audio) >= FRAME else 0
    if count <= 0:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(audio, FRAME)[::HOP][:count]
    difference = difference_function(frames)
    lags = np.arange(_MAX_LAG + 1)
    # Cumulative mean normalised difference.
    running = np.cumsum(difference[:, 1:], axis=1) / lags[1:]
    normalised = difference[:, 1:] / np.maximum(running, 1e-12)
    search = normalised[:, _MIN_LAG - 1:]  # column k is lag _MIN_LAG + k
    rows = np.arange(count)
    below = search < APERIODICITY
    lag = np.where(below.any(axis=1), below.argmax(axis=1), search.argmin(axis=1))
    # From the first dip below the threshold, walk down to its local minimum.
    last = search.shape[1] - 1
    for _ in range(last):
        step = np.minimum(lag + 1, last)
        move = search[rows, step] < search[rows, lag]
        if not move.any():
            break
        lag = np.where(move, step, lag)
    aperiodicity = search[rows, lag]
    # Parabolic interpolation around the minimum.
    middle = np.clip(lag, 1, last - 1)
    left, centre, right = (search[rows, middle - 1], search[rows, middle],
                           search[rows, middle + 1])
    curvature = left - 2 * centre + right
    shift = np.divide(0.5 * (left - right), curvature, out=np.zeros(count),
                      where=np.abs(curvature) > 1e-12)
    period = _MIN_LAG + middle + np.clip(shift, -1.0, 1.0)
    f0 = SAMPLE_RATE / period
    width = FRAME - _MAX_LAG
    quiet = (frames[:, :width].astype(np.float64) ** 2).sum(axis=1) < width * MIN_RMS ** 2
    f0[(aperiodicity >= APERIODICITY) | quiet] = np.nan
    return f0


class PitchTrack:
    """F0 every 10 ms of one stream, computed once as audio arrives; estimate i is
    centred on sample ``i * HOP`` of the stream."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.semitones = np.zeros(0)  # estimates from index self.first on (NaN: unvoiced)
        self.first = 0
        self.received = 0  # samples pushed
        # Samples the next estimates need; estimate 0 is centred on sample 0, so the
        # stream starts after half a frame of silence.
        self._tail = np.zeros(FRAME // 2, np.float32)

    @property
    def end(self) -> int:
        """Index of the first estimate not computed yet."""
        return self.first + len(self.semitones)

    def push(self, samples: np.ndarray) -> None:
        """Add the stream's next samples."""
        self.received += len(samples)
        audio = np.concatenate([self._tail, np.asarray(samples, np.float32)])
        f0 = yin(audio)
        if len(f0):
            with np.errstate(divide="ignore", invalid="ignore"):
                semitones = 12.0 * np.log2(f0 / 440.0)
            self.semitones = np.concatenate([self.semitones, semitones])
            consumed = len(f0) * HOP
            audio = audio[consumed:]
        self._tail = audio

    def forget(self, before: int) -> None:
        """Drop the estimates before index ``before``."""
        drop = min(max(0, before - self.first), len(self.semitones))
        if drop:
            self.semitones = self.semitones[drop:]
            self.first += drop

    def at(self, indices: np.ndarray) -> np.ndarray:
        """Semitones at estimate ``indices`` (NaN where unvoiced or not held), in their
        shape."""
        indices = np.asarray(indices, np.int64) - self.first
        held = (indices >= 0) & (indices < len(self.semitones))
        values = np.full(indices.shape, np.nan)
        values[held] = self.semitones[indices[held]]
        return values

    def over(self, centres: np.ndarray, length: float) -> np.ndarray:
        """Semitones of the frames ``length`` samples long centred on samples
        ``centres``: the median of the voiced estimates a frame holds (NaN where none is).
        Low, rough voices are voiced in only some of the estimates of each frame: the
        estimate nearest the centre alone would leave most of their frames without a
        pitch."""
        reach = int(length / HOP / 2)  # estimates on either side of the centre's
        nearest = np.round(np.asarray(centres, np.float64) / HOP)
        if reach == 0:
            return self.at(nearest)
        values = self.at(nearest[:, None] + np.arange(-reach, reach + 1))
        with warnings.catch_warnings():  # frames without a voiced estimate: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(values, axis=1)


def pitch_of(semitones: np.ndarray, min_voiced: int = MIN_VOICED
             ) -> tuple[float, float, float]:
    """``(median, spread, voiced frames)`` of a speaker's pitch over ``semitones``
    (NaN: unvoiced); the median is NaN with fewer than ``min_voiced`` voiced frames. The
    spread is the interquartile range scaled to a standard deviation."""
    voiced = semitones[np.isfinite(semitones)]
    if len(voiced) < min_voiced:
        return math.nan, math.nan, 0.0
    low, median, high = np.percentile(voiced, [25, 50, 75])
    return float(median), max(float(high - low) / 1.349, MIN_SPREAD), float(len(voiced))


def two_voices(medians: np.ndarray, gap: float, spread: float, least: int,
               separation: float = 0.0) -> np.ndarray | None:
    """Whether pitch medians (of windows that one clustering put together) are two
    voices: sorted, they cut into two groups of at least ``least`` each, whose means are
    ``gap`` semitones apart or more while each keeps within ``spread`` (standard
    deviation), as a real voice moving with intonation does not. With ``separation``,
    looser groups count too where they stand far apart for their width: at least
    ``WIDE_LEAST`` medians each, within ``WIDE_SPREAD``, whose means are also at least
    ``separation`` times the sum of their spreads apart. Returns the mask of the higher
    group (of the cut at the widest jump), or None. NaN medians are in neither."""
    known = np.flatnonzero(np.isfinite(medians))
    if len(known) < 2 * least:
        return None
    order = known[np.argsort(medians[known], kind="stable")]
    values = medians[order]
    best: tuple[float, int] | None = None
    for cut in range(least, len(values) - least + 1):
        low, high = values[:cut], values[cut:]
        apart, widths = high.mean() - low.mean(), (low.std(), high.std())
        tight = max(widths) <= spread
        wide = (separation > 0 and min(len(low), len(high)) >= WIDE_LEAST
                and max(widths) <= WIDE_SPREAD and apart >= separation * sum(widths))
        if apart >= gap and (tight or wide):
            jump = values[cut] - values[cut - 1]
            if best is None or jump > best[0]:
                best = (jump, cut)
    if best is None:
        return None
    mask = np.zeros(len(medians), bool)
    mask[order[best[1]:]] = True
    return mask


def pitch_penalty(local: np.ndarray, centroids: np.ndarray, weight: float,
                  margin: float) -> np.ndarray:
    """Cost added to the distance between local speakers and global speakers for their
    pitch: ``weight`` per unit of ``|difference| / sqrt(spread_a² + spread_b²)`` beyond
    ``margin`` such units. ``local`` ``(n, 2)`` and ``centroids`` ``(m, 2)`` hold median
    and spread in semitones; a NaN on either side costs nothing."""
    if weight <= 0 or not len(local) or not len(centroids):
        return np.zeros((len(local), len(centroids)))
    difference = np.abs(local[:, None, 0] - centroids[None, :, 0])
    scale = np.sqrt(local[:, None, 1] ** 2 + centroids[None, :, 1] ** 2)
    with np.errstate(invalid="ignore"):
        excess = np.maximum(difference / scale - margin, 0.0)
    return weight * np.nan_to_num(excess, nan=0.0)


__all__ = ["HOP", "FRAME", "MIN_SPREAD", "MIN_VOICED", "PitchTrack", "WIDE_LEAST",
           "WIDE_SPREAD", "pitch_of", "pitch_penalty", "two_voices", "yin"]
