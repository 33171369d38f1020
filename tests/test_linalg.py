"""The numpy assignment and clustering routines of the per-step path, against scipy's."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment

from streamer.linalg import LINKAGES, linkage_clusters, min_cost_assignment

DATA = os.path.join(os.path.dirname(__file__), "data")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_assignment_reaches_scipys_optimum_on_random_and_tied_costs():
    rng = np.random.default_rng(0)
    for trial in range(600):
        rows, columns = rng.integers(1, 7, size=2)
        cost = (rng.normal(size=(rows, columns)) if trial % 2
                else rng.integers(0, 3, size=(rows, columns)).astype(float))
        expected_rows, expected_columns = linear_sum_assignment(cost)
        found_rows, found_columns = min_cost_assignment(cost)
        assert cost[found_rows, found_columns].sum() == pytest.approx(
            cost[expected_rows, expected_columns].sum())
        assert len(found_rows) == min(rows, columns)
        assert len(set(found_rows.tolist())) == len(set(found_columns.tolist())) == len(found_rows)
        assert found_rows.tolist() == sorted(found_rows.tolist())


def test_assignment_refuses_what_it_cannot_solve():
    with pytest.raises(ValueError, match="finite"):
        min_cost_assignment(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="matrix"):
        min_cost_assignment(np.zeros(3))


@pytest.mark.parametrize("method", LINKAGES)
def test_linkage_clusters_match_scipys_cut(method):
    rng = np.random.default_rng(1)
    for _ in range(300):
        count = int(rng.integers(2, 25))
        vectors = np.abs(rng.normal(size=(count, 8))) + 2 * rng.normal(size=8)
        threshold = float(rng.uniform(0.05, 0.6))
        expected = fcluster(linkage(vectors, method, "cosine"), threshold, "distance")
        found = linkage_clusters(vectors, threshold, method)
        assert same_partition(expected, found)
        first_rows = [int(np.flatnonzero(found == label)[0]) for label in range(found.max() + 1)]
        assert first_rows == sorted(first_rows)


def test_diarizing_a_file_does_not_load_scipy(tmp_path):
    """The file-mode and stream path stays free of scipy (about 40 MB per process)."""
    script = textwrap.dedent(f"""
        import sys
        from streamer.cli import main
        code = main(["diarize", {os.path.join(DATA, "two_voices.wav")!r},
                     "--rttm", {str(tmp_path / "out.rttm")!r}])
        loaded = sorted(m for m in sys.modules if m == "scipy" or m.startswith("scipy."))
        print("SCIPY", loaded)
        sys.exit(code or 0)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "SCIPY []" in result.stdout, result.stdout
    assert "SPEAKER" in (tmp_path / "out.rttm").read_text()
