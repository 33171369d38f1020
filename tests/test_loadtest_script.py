"""scripts/loadtest.py reads the scheduler's tick durations from every worker's
``/metrics``: the figures that admission's tick rule is judged by."""
from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest

from tests.paths import script_module
from tests.test_server_support import run, running_server


@pytest.fixture(scope="module")
def loadtest():
    with script_module("loadtest") as module:
        yield module


def test_a_quantile_is_interpolated_within_its_bucket(loadtest) -> None:
    bounds = [0.1, 0.2, 0.5, float("inf")]
    cumulative = [10.0, 30.0, 40.0, 40.0]
    assert loadtest._bucket_quantile(bounds, cumulative, 0.25) == pytest.approx(0.1)
    assert loadtest._bucket_quantile(bounds, cumulative, 0.5) == pytest.approx(0.15)
    assert loadtest._bucket_quantile(bounds, cumulative, 0.95) == pytest.approx(0.44)
    # beyond the last finite bound: that bound, not infinity
    assert loadtest._bucket_quantile(bounds, [0.0, 0.0, 1.0, 4.0], 0.9) == 0.5
    assert math.isnan(loadtest._bucket_quantile(bounds, [0.0] * 4, 0.5))  # none observed


def test_tick_quantiles_come_from_the_servers_metrics(loadtest) -> None:
    async def body():
        async with running_server() as server:
            for _ in range(19):
                server.metrics.tick(3, 0.12)
            server.metrics.tick(3, 0.45)
            reader = SimpleNamespace(port=server.port, processes=1)
            return await asyncio.to_thread(loadtest.ServerProcess.tick_quantiles, reader, 5)

    figures = run(body(), timeout=30)
    assert figures["tick_workers"] == 1
    # 19 of 20 ticks in (0.1, 0.15]: the median is 10/19 into it, the 95th at its top
    assert figures["tick_p50"] == pytest.approx(0.1 + 0.05 * 10 / 19)
    assert figures["tick_p95"] == pytest.approx(0.15)
