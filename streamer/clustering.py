"""Online speaker matching against a memory of global speaker centroids."""
from __future__ import annotations

import numpy as np

from streamer.linalg import min_cost_assignment

_FORBIDDEN = 1e6
#: Below ``min_speakers``, a new speaker costs this fraction of ``delta_new``.
LENIENT_FACTOR = 0.6


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-8)


class CentroidMemory:
    """Global speakers of one stream as centroids of their local-speaker embeddings.

    :meth:`assign` maps the local speakers of one buffer to global speakers with a
    constrained (one-to-one) assignment that minimises the total cosine distance, where
    opening a new speaker costs ``delta_new``. Only local speakers marked ``can_update``
    (clearly active) may create or update a centroid.
    """

    def __init__(self, delta_new: float, max_speakers: int, min_speakers: int = 1):
        self.delta_new = delta_new
        self.max_speakers = max_speakers
        self.min_speakers = min_speakers
        self.reset()

    def reset(self) -> None:
        self._sums: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._sums)

    @property
    def sums(self) -> list[np.ndarray]:
        """The centroids' unnormalised sums (a speaker's weight is its sum's length)."""
        return [row.copy() for row in self._sums]

    def load(self, sums: list[np.ndarray]) -> None:
        """Start from the speakers of another stream (see :meth:`sums`)."""
        if len(sums) > self.max_speakers:
            raise ValueError(f"{len(sums)} speakers exceed max_speakers {self.max_speakers}")
        self._sums = [np.asarray(row, np.float64).copy() for row in sums]

    @property
    def centroids(self) -> np.ndarray:
        if not self._sums:
            return np.zeros((0, 0), np.float32)
        return normalize(np.stack(self._sums))

    def assign(self, embeddings: np.ndarray, can_update: np.ndarray,
               reluctance: float = 1.0) -> np.ndarray:
        """Global index for each row of ``embeddings`` (-1 when none can be given);
        ``reluctance`` scales the cost of a new speaker."""
        count = len(embeddings)
        result = np.full(count, -1, dtype=int)
        if count == 0:
            return result
        embeddings = normalize(np.asarray(embeddings, np.float64))
        known = len(self._sums)
        distances = (1.0 - embeddings @ self.centroids.T) if known else np.zeros((count, 0))
        room = self.max_speakers - known
        cost_new = self.delta_new * (LENIENT_FACTOR if known < self.min_speakers else 1.0)
        cost_new *= reluctance
        can_update = np.asarray(can_update, bool)
        # One private extra column per local speaker, costing cost_new: "new speaker" for
        # a clearly active one that is far from every centroid (while there is room),
        # "leave unassigned" for the others. So a local speaker is never forced onto a
        # centroid farther than cost_new, and a local speaker close to a centroid that
        # another local speaker of the buffer took does not become a new speaker.
        # At capacity, unassigned is the last resort.
        nearest = distances.min(axis=1) if known else np.full(count, np.inf)
        creates = can_update & (nearest > cost_new)
        extra = np.full((count, count), _FORBIDDEN)
        np.fill_diagonal(extra, np.where(creates & (room <= 0), _FORBIDDEN / 2, cost_new))
        cost = np.concatenate([distances, extra], axis=1)
        rows, columns = min_cost_assignment(cost)
        for row, column in sorted(zip(rows, columns), key=lambda rc: cost[rc[0], rc[1]]):
            if column < known:
                result[row] = column
                if can_update[row]:
                    self._sums[column] = self._sums[column] + embeddings[row]
            elif creates[row] and len(self._sums) < self.max_speakers:
                self._sums.append(embeddings[row].copy())
                result[row] = len(self._sums) - 1
        return result
