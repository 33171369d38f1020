"""Audio batches as the pyannote networks take them."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


def as_waveforms(waveforms: Any, min_samples: int) -> np.ndarray:
    """Validate ``(batch, samples)`` (or ``(batch, 1, samples)``) audio -> float32 2-D."""
    array = np.asarray(waveforms, dtype=np.float32)
    if array.ndim == 3 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 2:
        raise ValueError(f"waveforms must be (batch, samples), got shape {array.shape}")
    if array.shape[0] and array.shape[1] < min_samples:
        raise ValueError(f"chunks of {array.shape[1]} samples are too short for this model "
                         f"(at least {min_samples} needed)")
    if not _all_finite(array):
        raise ValueError("waveforms contain NaN or infinite values")
    return np.ascontiguousarray(array)


def _all_finite(array: np.ndarray) -> bool:
    """No NaN or infinity in ``array``: its minimum and maximum are finite (NaN carries
    through both), which needs no temporary array of the batch's size."""
    return not array.size or bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def as_weights(weights: Any, size: int) -> np.ndarray:
    """Validate per-frame pooling weights ``(batch=size, frames)`` -> float32 2-D."""
    array = np.asarray(weights, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != size or array.shape[1] < 1:
        raise ValueError(f"weights must be (batch={size}, frames), got shape {array.shape}")
    if not _all_finite(array):
        raise ValueError("weights contain NaN or infinite values")
    return np.ascontiguousarray(array)


def distinct_rows(batch: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The distinct rows of ``batch`` in order of first appearance, and each row's index
    among them: a chunk repeated once per local speaker goes through a network once.

    Rows are compared in full, but only with the previous row's (repeats of a stream's
    chunk come together) and with rows that share a sparse sample of values, so a batch
    of many streams' chunks costs about one pass over its memory."""
    firsts: list[int] = []  # row index of each distinct row
    by_sample: dict[bytes, list[int]] = {}
    inverse: list[int] = []
    for index, row in enumerate(batch):
        if inverse and np.array_equal(row, batch[firsts[inverse[-1]]]):
            inverse.append(inverse[-1])
            continue
        candidates = by_sample.setdefault(row[::_SAMPLE_STRIDE].tobytes(), [])
        match = next((c for c in candidates if np.array_equal(row, batch[firsts[c]])), None)
        if match is None:
            match = len(firsts)
            candidates.append(match)
            firsts.append(index)
        inverse.append(match)
    if len(firsts) == len(batch):
        return batch, inverse
    return batch[firsts], inverse


#: Every this many values of a row make the key that finds its possible duplicates.
_SAMPLE_STRIDE = 127


def shortest_input(num_frames: Callable[[int], int], frames: int, limit: int = 1 << 22) -> int:
    """The fewest samples for which a network gives at least ``frames`` output frames."""
    low, high = 1, limit
    while low < high:
        middle = (low + high) // 2
        if num_frames(middle) >= frames:
            high = middle
        else:
            low = middle + 1
    return low
