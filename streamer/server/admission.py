"""Admission by measured capacity: a new stream is accepted only while the process keeps
its streams real time, so that overload refuses newcomers instead of degrading everyone.

Every engine call reports how much audio it processed and how far its stream is behind;
the process's CPU time is read at each report. Over a sliding window:

* cost: CPU seconds of the whole process (models, engine, websocket I/O) per second of
  audio processed. Each open stream may send real-time audio, so the streams demand
  ``streams * cost`` of the CPUs; a newcomer is refused when ``(streams + 1) * cost``
  exceeds ``max_load`` of them. A stream sent faster than real time costs the same per
  second of audio (backpressure slows it to what the server gives). Until the window
  holds enough audio to tell the cost (a fresh server), at most ``cold_start`` streams
  are admitted, so that a burst of connections cannot overload a server that has not
  measured itself yet.
* lag: after each call, how far the stream's processing is behind real time (the wall
  time since its first audio minus the audio processed, at most its backlog). When the
  95th percentile exceeds ``max_lag``, the process is already behind whatever the
  estimate says, and newcomers are refused until it catches up (or has no stream open).
  A stream sent faster than real time is never behind real time, so a client sending a
  file at full speed does not close the door.
* scheduler: what one more stream would take of the process's scheduler, the one thread
  that runs every stream's steps and waits for their model calls (on the CPU or a GPU).
  A tick serves all the steps that wait, so its cost is a fixed part plus a part per
  step; the per-step part is fitted over the window's ticks (least squares of seconds on
  steps served), and divided by the audio a step carries it gives the scheduler seconds
  one real-time stream takes per second. A newcomer is refused when the open streams
  plus the newcomer would take more than ``max_busy`` of the scheduler's time. The
  fixed part is left out on purpose: under load ticks grow and serve more steps each,
  so it is shared ever more thinly. This is the rule that follows a GPU's capacity,
  which the CPU cost does not see.
* tick: how long the scheduler's ticks take. A step that falls due waits for the tick
  under way and then runs in the next, so a tick's duration bounds how late steps are
  served, whatever makes it long: this process's own streams, or the other processes
  that share its GPU (or its cores). Those others show in no rule above, which fit
  this process's own work; they show here. When the 95th percentile of the window's
  tick durations exceeds ``max_tick``, newcomers are refused. It reacts once ticks have
  grown, and a stream shows its cost only after it is admitted, so near the limit (ticks
  beyond half of ``max_tick``) newcomers are also paced: one every ``PACE`` seconds per
  process, so that what the last one costs shows before the next comes in (a fast ramp
  would otherwise let many in past the limit before their cost shows).

The default ``max_load`` is half the CPUs: the engine's Python work holds the GIL, so
one process keeps about one core busy before its streams fall behind; ``--processes N``
uses more cores.
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Callable

#: Streams a fresh server admits per CPU before it knows what a stream costs.
COLD_START_PER_CPU = 4

#: Engine calls a window needs before the lag rule applies (one slow first call of a
#: freshly loaded model must not close the door).
MIN_CALLS = 20
#: Seconds of audio a window needs before the cost rule applies.
MIN_AUDIO = 2.0
#: Ticks a window needs before the scheduler rule applies.
MIN_TICKS = 10
#: Ticks a window needs before the tick rule applies: enough that its 95th percentile is
#: never one tick alone (the slow first passes of freshly loaded models).
MIN_TICK_TIMES = 20
#: Near the tick limit, seconds between two admissions of one process: a step's worth,
#: so that a newcomer's first steps are in the ticks before the next one is let in.
PACE = 0.5


class Admission:
    """Thread-safe record of engine calls and the admission decision they imply.

    Args:
        cpus: CPU cores this process may use.
        max_load: Share of ``cpus`` the streams may keep busy; 0 turns the load rule off.
        max_lag: Seconds (95th percentile) streams may be behind real time; 0 turns the
            lag rule off.
        max_busy: Share of the scheduler's time the streams may take, the newcomer
            counted, at the measured cost of a step; 0 turns the scheduler rule off.
        max_tick: Seconds (95th percentile) a scheduler tick may take; 0 turns the tick
            rule off.
        window: Seconds of calls the decision looks at.
        cold_start: Most open streams while the cost is unknown (default: 4 per CPU,
            at least 8).
    """

    def __init__(self, cpus: float, max_load: float = 0.5, max_lag: float = 1.0,
                 max_busy: float = 0.0, max_tick: float = 0.0, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_time: Callable[[], float] = time.process_time,
                 cold_start: int | None = None):
        self.cpus = cpus
        self.max_load = max_load
        self.max_lag = max_lag
        self.max_busy = max_busy
        self.max_tick = max_tick
        self.window = window
        self.cold_start = (cold_start if cold_start is not None
                           else max(8, math.ceil(COLD_START_PER_CPU * cpus)))
        self._clock = clock
        self._cpu_time = cpu_time
        self._calls: collections.deque[tuple[float, float, float, float]] = collections.deque()
        # (end time, steps served, seconds)
        self._ticks: collections.deque[tuple[float, int, float]] = collections.deque()
        self._lock = threading.Lock()
        self._last_admitted = -math.inf

    @property
    def enabled(self) -> bool:
        return (self.max_load > 0 or self.max_lag > 0 or self.max_busy > 0
                or self.max_tick > 0)

    def record(self, audio: float, behind: float) -> None:
        """One engine call: ``audio`` seconds of audio processed; after it the stream is
        ``behind`` seconds behind real time."""
        now, cpu = self._clock(), self._cpu_time()
        with self._lock:
            self._calls.append((now, cpu, audio, max(behind, 0.0)))
            self._prune(now)

    def record_tick(self, steps: int, seconds: float) -> None:
        """One scheduler tick that just ended: ``steps`` stream steps in ``seconds``."""
        now = self._clock()
        with self._lock:
            self._ticks.append((now, steps, max(seconds, 0.0)))
            self._prune(now)

    def step_cost(self) -> float | None:
        """Scheduler seconds one more stream step adds to a tick, fitted over the window
        (None: too few ticks to tell). When every tick served as many steps, the mean
        cost per step stands in (it includes the fixed part: an overestimate)."""
        with self._lock:
            self._prune(self._clock())
            if len(self._ticks) < MIN_TICKS:
                return None
            steps = [float(tick[1]) for tick in self._ticks]
            seconds = [tick[2] for tick in self._ticks]
        mean_steps = sum(steps) / len(steps)
        mean_seconds = sum(seconds) / len(seconds)
        spread = sum((x - mean_steps) ** 2 for x in steps)
        average = mean_seconds / mean_steps if mean_steps > 0 else 0.0
        if spread <= 0:
            return average
        slope = sum((x - mean_steps) * (y - mean_seconds)
                    for x, y in zip(steps, seconds)) / spread
        return max(slope, 0.0)

    def busy(self) -> float | None:
        """Share of the scheduler's time one real-time stream takes: the cost of a step
        over the audio a step carries (None: not measured yet)."""
        step = self.step_cost()
        with self._lock:
            calls = list(self._calls)
        if step is None or not calls:
            return None
        audio = sum(call[2] for call in calls) / len(calls)
        return step / audio if audio > 0 else None

    def cost(self) -> float | None:
        """CPU seconds of the process per second of audio over the window (None: too
        little audio to tell)."""
        with self._lock:
            self._prune(self._clock())
            if len(self._calls) < 2:
                return None
            audio = sum(call[2] for call in list(self._calls)[1:])
            if audio < MIN_AUDIO:
                return None
            return max(self._calls[-1][1] - self._calls[0][1], 0.0) / audio

    def lag(self) -> float | None:
        """95th percentile of how far streams were behind real time over the window
        (None: too few calls)."""
        return self._p95(self._calls, 3, MIN_CALLS)

    def tick_time(self) -> float | None:
        """95th percentile of the window's tick durations, in seconds (None: too few
        ticks)."""
        return self._p95(self._ticks, 2, MIN_TICK_TIMES)

    def _p95(self, rows: collections.deque, column: int, least: int) -> float | None:
        """95th percentile of ``column`` of the window's ``rows`` (None: fewer than
        ``least``)."""
        with self._lock:
            self._prune(self._clock())
            if len(rows) < least:
                return None
            values = sorted(row[column] for row in rows)
        return values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]

    def admitted(self) -> None:
        """A new stream was let in (see ``pace`` in :meth:`refusal`)."""
        with self._lock:
            self._last_admitted = self._clock()

    def _since_admitted(self) -> float:
        with self._lock:
            return self._clock() - self._last_admitted

    def refusal(self, streams: int, pace: bool = False) -> str | None:
        """Why a new stream is refused now, or None when it may come in. ``streams`` is
        the number of open streams. ``pace``: also refuse a newcomer that comes too soon
        after the last one admitted (:meth:`admitted`) while ticks are near the limit
        (the handshake asks this; readiness does not)."""
        if self.max_lag > 0 and streams > 0:
            # With no stream open none is behind: the window's lag is that of streams
            # gone, and a server with nothing to do admits one.
            lag = self.lag()
            if lag is not None and lag > self.max_lag:
                return (f"the server is behind: its streams are {lag:.2f} s behind real "
                        f"time (limit {self.max_lag:g} s)")
        if self.max_tick > 0:
            tick = self.tick_time()
            if tick is not None and tick > self.max_tick:
                return (f"the server is at capacity: its scheduler's ticks take {tick:.2f} "
                        f"s (limit {self.max_tick:g} s), so steps are served late")
            near = tick is not None and tick > self.max_tick / 2
            if pace and near and self._since_admitted() < PACE:
                return (f"the server is near capacity: its scheduler's ticks take "
                        f"{tick:.2f} s (limit {self.max_tick:g} s), so it admits one "
                        f"stream every {PACE:g} s")
        if self.max_load > 0 and streams > 0:
            cost = self.cost()
            budget = self.max_load * self.cpus
            if cost is None and streams >= self.cold_start:
                return (f"the server is starting: {streams} streams are open and it has "
                        f"not measured what one costs yet")
            if cost is not None and (streams + 1) * cost > budget:
                return (f"the server is at capacity: a real-time stream costs {cost:.3f} "
                        f"CPU and {streams} are open, of {budget:.2f} CPU")
        if self.max_busy > 0 and streams > 0:
            busy = self.busy()
            if busy is not None and (streams + 1) * busy > self.max_busy:
                return (f"the server is at capacity: a real-time stream takes {busy:.1%} "
                        f"of its scheduler and {streams} are open (limit "
                        f"{self.max_busy:.0%})")
        return None

    def _prune(self, now: float) -> None:
        while self._calls and self._calls[0][0] < now - self.window:
            self._calls.popleft()
        while self._ticks and self._ticks[0][0] < now - self.window:
            self._ticks.popleft()


__all__ = ["Admission", "COLD_START_PER_CPU", "MIN_AUDIO", "MIN_CALLS", "MIN_TICKS",
           "MIN_TICK_TIMES", "PACE"]
