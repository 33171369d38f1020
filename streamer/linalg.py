"""Small combinatorial routines the per-step path needs, in numpy.

The stream's per-buffer problems are tiny (a handful of local speakers, a few dozen
windows), and scipy's ``optimize`` and ``cluster`` packages would add about 40 MB to every
process that only diarizes: these plain implementations keep file mode and the workers
lean. Both are exact: same optimum, same clusters.
"""
from __future__ import annotations

import numpy as np


def min_cost_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a one-to-one assignment of minimal total cost.

    ``cost`` is ``(rows, columns)``; every row is assigned when ``rows <= columns`` (the
    matrix is transposed otherwise), as :func:`scipy.optimize.linear_sum_assignment` does.
    Shortest augmenting paths with row and column potentials (Hungarian method)."""
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost must be a matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("cost must be finite")
    if cost.shape[0] > cost.shape[1]:
        columns, rows = min_cost_assignment(cost.T)
        order = np.argsort(rows)
        return rows[order], columns[order]
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, int)  # owner[j]: 1-based row assigned to column j (0: none)
    way = np.zeros(m + 1, int)
    for row in range(1, n + 1):
        owner[0] = row
        column = 0
        slack = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[column] = True
            current = owner[column]
            free = np.flatnonzero(~used[1:]) + 1
            reduced = cost[current - 1, free - 1] - u[current] - v[free]
            better = reduced < slack[free]
            slack[free[better]] = reduced[better]
            way[free[better]] = column
            nearest = free[int(np.argmin(slack[free]))]
            delta = slack[nearest]
            u[owner[used]] += delta
            v[used] -= delta
            slack[~used] -= delta
            column = nearest
            if owner[column] == 0:
                break
        while column:
            previous = way[column]
            owner[column] = owner[previous]
            column = previous
    assigned = np.flatnonzero(owner[1:]) + 1
    rows = owner[assigned] - 1
    order = np.argsort(rows)
    return rows[order], assigned[order] - 1


LINKAGES = ("average", "complete", "single", "weighted")


def linkage_clusters(vectors: np.ndarray, threshold: float,
                     method: str = "average") -> np.ndarray:
    """Flat clusters of agglomerative clustering on cosine distance, cut at
    ``threshold``: two clusters merge while their linkage distance is at most
    ``threshold`` (as scipy's ``fcluster(linkage(...), threshold, "distance")``; these
    linkages never decrease, so the cut is the same). ``method`` is one of
    :data:`LINKAGES`, with scipy's meaning. Labels are numbered from 0 in order of each
    cluster's first row."""
    if method not in LINKAGES:
        raise ValueError(f"method must be one of {', '.join(LINKAGES)}, got {method!r}")
    count = len(vectors)
    if count == 0:
        return np.zeros(0, int)
    units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    distance = np.clip(1.0 - units @ units.T, 0.0, 2.0)
    sizes = np.ones(count)
    alive = np.ones(count, bool)
    owner = np.arange(count)
    np.fill_diagonal(distance, np.inf)
    while alive.sum() > 1:
        masked = np.where(alive[:, None] & alive[None, :], distance, np.inf)
        i, j = divmod(int(np.argmin(masked)), count)
        if masked[i, j] > threshold:
            break
        if method == "average":  # mean over all pairs: the size-weighted mean
            merged = (sizes[i] * distance[i] + sizes[j] * distance[j]) / (sizes[i] + sizes[j])
        elif method == "weighted":
            merged = (distance[i] + distance[j]) / 2
        elif method == "single":
            merged = np.minimum(distance[i], distance[j])
        else:
            merged = np.maximum(distance[i], distance[j])
        distance[i, :] = merged
        distance[:, i] = merged
        distance[i, i] = np.inf
        sizes[i] += sizes[j]
        alive[j] = False
        owner[owner == j] = i
    order = {root: label for label, root in enumerate(dict.fromkeys(owner.tolist()))}
    return np.array([order[root] for root in owner])
