"""Rolling audio buffer: the last ``duration`` seconds, advanced every ``step``."""
from __future__ import annotations

from typing import Iterator

import numpy as np


class RollingBuffer:
    """Keeps the last ``size`` samples of a stream and yields a full buffer every ``step``.

    At stream start the buffer is left-padded with zeros, so the first buffer comes after
    the first ``step`` samples, not after ``size``. ``history`` more samples are kept
    before the buffer, for :meth:`recent`.
    """

    def __init__(self, size: int, step: int, history: int = 0):
        if size <= 0 or step <= 0 or step > size or history < 0:
            raise ValueError(f"need 0 < step <= size and history >= 0, got size={size}, "
                             f"step={step}, history={history}")
        self.size = size
        self.step = step
        self.history = history
        self.reset()

    def reset(self) -> None:
        self._data = np.zeros(self.size + self.history, np.float32)
        self._pending = np.zeros(0, np.float32)
        self.emitted = 0  # absolute index of the sample after the last emitted buffer

    @property
    def missing(self) -> int:
        """Samples the next buffer still needs."""
        return self.step - len(self._pending)

    @property
    def received(self) -> int:
        """Samples received so far."""
        return self.emitted + len(self._pending)

    def push(self, samples: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """Add samples; yields ``(buffer, end)`` for every completed step, where ``end`` is
        the absolute index just past the buffer's last sample."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        while len(self._pending) >= self.step:
            yield self._advance(self.step), self.emitted

    def tail(self) -> tuple[np.ndarray, int] | None:
        """The buffer ending at the last received sample, if any arrived since the last
        step (used at the end of a stream)."""
        if len(self._pending) == 0:
            return None
        return self._advance(len(self._pending)), self.emitted

    def recent(self, count: int) -> np.ndarray:
        """The last ``count`` samples received (at most ``size + history``, and the
        samples received), oldest first."""
        count = min(count, self.received, len(self._data) + len(self._pending))
        kept = max(0, count - len(self._pending))
        return np.concatenate([self._data[len(self._data) - kept:],
                               self._pending[len(self._pending) - (count - kept):]])

    def _advance(self, count: int) -> np.ndarray:
        incoming, self._pending = self._pending[:count], self._pending[count:]
        self._data = np.concatenate([self._data[count:], incoming])
        self.emitted += count
        return self._data[self.history:]
