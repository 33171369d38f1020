"""Admission by measured capacity: past what the process can keep real time, new streams
are refused at the handshake, and the admitted ones stay real time."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from streamer.models.frontend import SegmentationEmbeddingFrontend
from streamer.server.admission import MIN_CALLS, MIN_TICK_TIMES, MIN_TICKS, PACE, Admission
from tests.fakes import FakeEmbedding, FakeSegmentation, tone_conversation
from tests.test_server_support import (open_stream, read_all, run, running_server, scaled,
                                       send_audio)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 5.0

    def __call__(self) -> float:
        return self.now

    def cpu_time(self) -> float:
        return self.cpu


def calls(admission: Admission, clock: Clock, count: int, audio: float = 0.5,
          cpu: float = 0.2, behind: float = 0.0) -> None:
    """``count`` engine calls, each ``audio`` seconds long and ``cpu`` seconds of CPU."""
    for _ in range(count):
        clock.cpu += cpu
        admission.record(audio, behind)


def test_the_cost_rule_counts_every_open_stream_and_the_newcomer() -> None:
    clock = Clock()
    admission = Admission(cpus=1, max_load=0.85, max_lag=0, window=10.0, clock=clock,
                          cpu_time=clock.cpu_time)
    calls(admission, clock, 1)
    assert admission.cost() is None  # too little audio to tell
    calls(admission, clock, 10)  # 0.4 s of CPU per second of audio
    assert admission.cost() == pytest.approx(0.4)
    assert admission.refusal(streams=1) is None  # 2 * 0.4 <= 0.85
    reason = admission.refusal(streams=2)  # 3 * 0.4 > 0.85
    assert reason is not None and "capacity" in reason
    assert admission.refusal(streams=0) is None  # nothing open: nothing to measure
    clock.now += 10.5  # the window has passed
    assert admission.cost() is None and admission.refusal(streams=2) is None


def test_a_fresh_server_admits_a_few_streams_per_cpu_until_it_knows_their_cost() -> None:
    clock = Clock()
    admission = Admission(cpus=4, clock=clock, cpu_time=clock.cpu_time)
    assert admission.cold_start == 16
    assert admission.refusal(streams=15) is None
    assert "not measured" in admission.refusal(streams=16)
    calls(admission, clock, 10, cpu=0.01)  # cheap streams: the cost now decides
    assert admission.refusal(streams=50) is None  # 51 * 0.02 <= 0.5 * 4
    assert Admission(cpus=1).cold_start == 8


def test_a_stream_sent_faster_than_real_time_costs_per_second_of_audio() -> None:
    clock = Clock()
    admission = Admission(cpus=2, max_load=0.85, max_lag=0.5, clock=clock,
                          cpu_time=clock.cpu_time)
    calls(admission, clock, 100, audio=2.0, cpu=0.05)  # a file at full speed
    assert admission.cost() == pytest.approx(0.025)
    assert admission.refusal(streams=1) is None


def test_the_lag_rule_needs_enough_calls_and_looks_at_the_95th_percentile() -> None:
    clock = Clock()
    admission = Admission(cpus=8, max_load=0, max_lag=0.5, window=10.0, clock=clock,
                          cpu_time=clock.cpu_time)
    calls(admission, clock, 1, behind=3.0)  # one slow call (a model warming up)
    assert admission.lag() is None and admission.refusal(streams=1) is None
    calls(admission, clock, MIN_CALLS, behind=0.05)
    assert admission.refusal(streams=1) is None  # one in 21 is not the 95th percentile
    calls(admission, clock, 5, behind=2.0)
    reason = admission.refusal(streams=1)
    assert reason is not None and "behind" in reason
    # the streams that were behind have all ended: nothing is behind, one may come in
    assert admission.refusal(streams=0) is None
    clock.now += 11.0
    assert admission.refusal(streams=1) is None


def test_rules_can_be_turned_off() -> None:
    clock = Clock()
    admission = Admission(cpus=1, max_load=0, max_lag=0, clock=clock,
                          cpu_time=clock.cpu_time)
    calls(admission, clock, 50, cpu=5.0, behind=5.0)
    assert not admission.enabled and admission.refusal(streams=100) is None


def test_the_scheduler_rule_fits_what_one_more_step_costs() -> None:
    clock = Clock()
    admission = Admission(cpus=1, max_load=0, max_lag=0, max_busy=0.9, window=10.0,
                          clock=clock, cpu_time=clock.cpu_time)
    assert admission.enabled
    calls(admission, clock, 5, audio=0.5)
    for jobs in range(1, MIN_TICKS):  # a tick costs 0.05 s + 0.01 s per step
        clock.now += 0.1
        admission.record_tick(jobs, 0.05 + 0.01 * jobs)
    assert admission.busy() is None and admission.refusal(streams=100) is None
    clock.now += 0.1
    admission.record_tick(3, 0.08)
    assert admission.step_cost() == pytest.approx(0.01)
    assert admission.busy() == pytest.approx(0.02)  # 0.01 s per 0.5 s of audio
    assert admission.refusal(streams=43) is None  # 44 * 0.02 <= 0.9
    reason = admission.refusal(streams=45)  # 46 * 0.02 > 0.9
    assert reason is not None and "takes 2.0% of its scheduler" in reason
    assert admission.refusal(streams=0) is None
    clock.now += 11.0  # the window forgets; nothing is measured
    assert admission.busy() is None and admission.refusal(streams=45) is None
    for _ in range(MIN_TICKS):  # every tick the same size: the mean cost stands in
        clock.now += 0.1
        admission.record_tick(4, 0.08)
    assert admission.step_cost() == pytest.approx(0.02)
    off = Admission(cpus=1, max_load=0, max_lag=0, max_busy=0, clock=clock)
    off.record_tick(1, 100.0)
    assert not off.enabled and off.refusal(streams=50) is None


def test_the_tick_rule_refuses_while_ticks_run_long_whatever_slows_them() -> None:
    clock = Clock()
    admission = Admission(cpus=1, max_load=0, max_lag=0, max_busy=0, max_tick=0.4,
                          window=10.0, clock=clock, cpu_time=clock.cpu_time)
    assert admission.enabled

    def ticks(count: int, seconds: float) -> None:
        for _ in range(count):
            clock.now += 0.25
            admission.record_tick(1, seconds)

    ticks(MIN_TICK_TIMES - 1, 0.6)  # too few ticks to tell
    assert admission.tick_time() is None and admission.refusal(streams=1) is None
    clock.now += 11.0
    ticks(20, 0.05)
    assert admission.tick_time() == pytest.approx(0.05)
    ticks(1, 0.6)  # one long tick of 21 is above the 95th percentile
    assert admission.tick_time() == pytest.approx(0.05)
    assert admission.refusal(streams=1) is None
    ticks(1, 0.6)  # two of 22 are not
    assert admission.tick_time() == pytest.approx(0.6)
    reason = admission.refusal(streams=1)
    assert reason is not None and "ticks take 0.60 s (limit 0.4 s)" in reason
    assert admission.refusal(streams=0) is not None  # the device is slow for anyone
    clock.now += 11.0  # the window forgets
    assert admission.tick_time() is None and admission.refusal(streams=1) is None
    off = Admission(cpus=1, max_load=0, max_lag=0, max_busy=0, max_tick=0, clock=clock)
    for _ in range(2 * MIN_TICK_TIMES):
        off.record_tick(1, 5.0)
    assert not off.enabled and off.refusal(streams=5) is None


def test_near_the_tick_limit_newcomers_are_paced_so_their_cost_shows_first() -> None:
    clock = Clock()
    admission = Admission(cpus=1, max_load=0, max_lag=0, max_busy=0, max_tick=0.2,
                          clock=clock, cpu_time=clock.cpu_time)

    def ticks(seconds: float) -> None:
        for _ in range(MIN_TICK_TIMES):
            clock.now += 0.05
            admission.record_tick(4, seconds)

    ticks(0.05)  # far from the limit: a burst comes in at once
    for _ in range(5):
        assert admission.refusal(streams=10, pace=True) is None
        admission.admitted()
    clock.now += 11.0
    ticks(0.15)  # beyond half the limit: one newcomer per PACE seconds
    assert admission.refusal(streams=10, pace=True) is None
    admission.admitted()
    clock.now += PACE / 2
    reason = admission.refusal(streams=11, pace=True)
    assert reason is not None and f"one stream every {PACE:g} s" in reason
    assert admission.refusal(streams=11) is None  # readiness does not pace
    clock.now += PACE / 2
    assert admission.refusal(streams=11, pace=True) is None


_AUDIO = tone_conversation([(300.0, 3.0), (None, 0.5), (700.0, 3.0)] * 2)


async def _real_time_stream(server, delay: float) -> list[dict]:
    """A client that connects after ``delay`` seconds and streams 13 s of two tones at
    real time; its events."""
    await asyncio.sleep(delay)
    ws, _ = await open_stream(server)
    sender = asyncio.create_task(send_audio(ws, _AUDIO, chunk=0.1, speed=1.0))
    events = await read_all(ws)
    await sender
    return events


class WaitingSegmentation(FakeSegmentation):
    """The fake model, waiting ``wait`` seconds per chunk without using the CPU, as a
    process waits for a GPU."""

    def __init__(self, wait: float):
        super().__init__()
        self.wait = wait

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        time.sleep(self.wait * len(waveforms))
        return super().__call__(waveforms)


def test_a_server_waiting_on_its_models_refuses_newcomers_the_cpu_rule_misses() -> None:
    # Each stream's step waits 0.2 s per 0.5 s of audio without CPU: the cost rule sees
    # little, a stream takes 40 % of the scheduler; two fit under 90 %, three do not.
    frontend = SegmentationEmbeddingFrontend(WaitingSegmentation(0.2), FakeEmbedding(),
                                             name="waiting", delta_new=0.5)

    async def body():
        async with running_server(frontend, cpus=1, max_load=0.85, max_lag=0,
                                  max_busy=0.9, max_tick=0) as server:
            streams = [asyncio.create_task(_real_time_stream(server, delay))
                       for delay in (0, 0.5)]
            # When the two streams' steps share ticks, ticks come at two a second: the
            # window (10 s) must hold MIN_TICKS of them before the scheduler rule refuses.
            await asyncio.sleep(scaled(6.0))
            cost = server.context.admission.cost()
            with pytest.raises(InvalidStatus) as refused:
                await open_stream(server)
            results = await asyncio.gather(*streams)
            return refused.value.response, cost, results

    response, cost, results = run(body(), timeout=60)
    assert cost is not None and 3 * cost < 0.85, "the CPU rule alone would admit"
    assert response.status_code == 503
    assert "of its scheduler" in json.loads(response.body)["message"]
    for events in results:
        assert events[-1]["type"] == "end"
        assert not [e for e in events if e["type"] == "warning"]


class SharedDevice:
    """A device that other processes use too (as several server processes share one
    GPU): a call waits while they hold it. ``start`` makes the others hold it for
    ``held`` seconds (drawn uniformly, as their work comes) with ``gap`` seconds between."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._others: threading.Thread | None = None

    def start(self, held: tuple[float, float], gap: float) -> None:
        rng = np.random.default_rng(0)

        def others() -> None:
            while not self._stop.is_set():
                with self.lock:
                    time.sleep(rng.uniform(*held))
                time.sleep(gap)

        self._others = threading.Thread(target=others, daemon=True)
        self._others.start()

    def stop(self) -> None:
        self._stop.set()
        if self._others is not None:
            self._others.join()


class SharedSegmentation(FakeSegmentation):
    """The fake model, run on a :class:`SharedDevice` for ``cost`` seconds per chunk."""

    def __init__(self, device: SharedDevice, cost: float):
        super().__init__()
        self.device = device
        self.cost = cost

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        with self.device.lock:
            time.sleep(self.cost * len(waveforms))
        return super().__call__(waveforms)


def test_a_device_busy_with_other_processes_refuses_newcomers_the_own_rules_miss() -> None:
    # The stream's own work is 0.01 s per 0.5 s step, 2 % of the scheduler: the
    # scheduler rule would admit dozens. But other processes keep the device busy (for
    # 0.2-0.4 s at a time, 0.02 s apart), so this process's ticks wait for it: the tick
    # rule sees that, once its window holds MIN_TICK_TIMES ticks. Holds of up to 0.6 s
    # let too few ticks into a 6 s window now and then (the rule then does not judge),
    # so the holds are shorter and the window longer.
    device = SharedDevice()
    frontend = SegmentationEmbeddingFrontend(SharedSegmentation(device, 0.01),
                                             FakeEmbedding(), name="shared", delta_new=0.5)

    async def body():
        async with running_server(frontend, cpus=1, max_load=0, max_lag=0, max_busy=0.9,
                                  max_tick=0.2) as server:
            admission = server.context.admission
            admission.window = 10.0
            device.start(held=(0.2, 0.4), gap=0.02)
            try:
                streams = [asyncio.create_task(_real_time_stream(server, delay))
                           for delay in (0, 0.2, 0.35)]
                # Real time, not scaled: the streams' 13 s of audio must still be playing.
                await asyncio.sleep(11.0)
                busy, tick = admission.busy(), admission.tick_time()
                admission.max_tick = 0
                own = admission.refusal(streams=3)
                admission.max_tick = 0.2
                with pytest.raises(InvalidStatus) as refused:
                    await open_stream(server)
            finally:
                device.stop()
            results = await asyncio.gather(*streams)
            return refused.value.response, own, tick, results

    response, own, tick, results = run(body(), timeout=60)
    assert own is None, "the process's own rules would admit"
    assert tick is not None and tick > 0.2
    assert response.status_code == 503
    error = json.loads(response.body)
    assert error["code"] == "too_many_connections" and "ticks take" in error["message"]
    for events in results:  # the admitted streams ran to their end, real time
        assert events[-1]["type"] == "end"
        assert not [e for e in events if e["type"] == "warning"]


def test_the_handshake_paces_newcomers_near_the_tick_limit() -> None:
    async def body():
        async with running_server(cpus=1, max_load=0, max_lag=0, max_busy=0,
                                  max_tick=0.2) as server:
            for _ in range(MIN_TICK_TIMES):  # ticks at 0.15 s: near the 0.2 s limit
                server.context.admission.record_tick(8, 0.15)
            first, _ = await open_stream(server)
            with pytest.raises(InvalidStatus) as paced:
                await open_stream(server)
            await asyncio.sleep(PACE)
            third, _ = await open_stream(server)
            for ws in (first, third):
                await ws.close()
            return paced.value.response

    response = run(body(), timeout=30)
    assert response.status_code == 503
    error = json.loads(response.body)
    assert error["code"] == "too_many_connections"
    assert f"one stream every {PACE:g} s" in error["message"]


class SlowSegmentation(FakeSegmentation):
    """The fake model, costing ``cost`` seconds of CPU per chunk (numpy work that lets
    other threads run, as real models do)."""

    def __init__(self, cost: float):
        super().__init__()
        self.cost = cost
        self._matrix = np.random.default_rng(0).standard_normal((96, 96))

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        deadline = time.thread_time() + self.cost * len(waveforms)
        while time.thread_time() < deadline:
            self._matrix @ self._matrix
        return super().__call__(waveforms)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_busy_server_refuses_newcomers_and_keeps_its_streams_real_time() -> None:
    # Each stream costs 0.2 s of CPU per 0.5 s step (0.4 CPU); one CPU at 85 % holds
    # two such streams, not three.
    frontend = SegmentationEmbeddingFrontend(SlowSegmentation(0.2), FakeEmbedding(),
                                             name="slow", delta_new=0.5)

    async def body():
        async with running_server(frontend, cpus=1, max_load=0.85, max_lag=0,
                                  workers=4) as server:
            server.context.admission.window = 3.0
            streams = [asyncio.create_task(_real_time_stream(server, delay))
                       for delay in (0, 0.5)]
            await asyncio.sleep(scaled(4.0))  # both streams measured for a few seconds
            with pytest.raises(InvalidStatus) as refused:
                await open_stream(server)
            ready = await asyncio.to_thread(_get, server.port, "/readyz")
            health = await asyncio.to_thread(_get, server.port, "/healthz")
            results = await asyncio.gather(*streams)
            return refused.value.response, ready, health, results, server.metrics.rejected

    response, ready, health, results, rejected = run(body(), timeout=60)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    error = json.loads(response.body)
    assert error["code"] == "too_many_connections" and "capacity" in error["message"]
    assert ready[0] == 503 and "capacity" in ready[1]
    assert health[0] == 200
    assert rejected.get("overloaded", 0) >= 1
    for events in results:  # the admitted streams ran to their end, real time
        assert events[-1]["type"] == "end"
        assert not [e for e in events if e["type"] == "warning"]


def test_readyz_says_ready_when_there_is_room() -> None:
    async def body():
        async with running_server() as server:
            return await asyncio.to_thread(_get, server.port, "/readyz")

    assert run(body()) == (200, "ready\n")
