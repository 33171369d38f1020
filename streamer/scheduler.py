"""One scheduler for all the streams of a process: model calls batched per tick.

Streams hand their work to :class:`TickScheduler` as jobs: code that yields model calls
(:mod:`streamer.models.calls`), such as ``engine.feed_steps(samples)``. One thread serves
them in ticks: a tick takes every job waiting, drives them together, and makes one
forward pass per model (and input shape) for all the streams that wait on it, so the
cost of a forward pass is shared by every stream whose step is due. Under load the ticks
grow by themselves: the jobs that arrive during one tick are all served by the next.

Jobs of one stream must not overlap (a stream submits its next job once the last one is
done); jobs of different streams never share state, so their order within a tick does
not matter, and each stream's results equal those of running it alone.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from streamer.models.calls import BatchObserver, Models, Steps, run_together

logger = logging.getLogger(__name__)

#: ``on_tick(jobs, seconds)`` is called after every tick.
TickObserver = Callable[[int, float], None]


@dataclass
class _Job:
    make: Callable[[], Steps[Any]]
    future: Future = field(default_factory=Future)


class TickScheduler:
    """Serves jobs (functions that return model-call steps) in batched ticks, in a thread
    of its own.

    Args:
        models: The front end's batchable models, by name.
        max_batch: Most rows in one forward pass.
        min_tick: Shortest time between the starts of two ticks, in seconds: waiting a
            little lets more streams share a tick (0: a tick starts as soon as a job waits).
        on_batch: Called after every forward pass (model name, jobs, rows, seconds).
        on_tick: Called after every tick (jobs, seconds).
        thread_init: Called first in the scheduler's thread (e.g. to set torch's threads).
    """

    def __init__(self, models: Models, *, max_batch: int = 64, min_tick: float = 0.0,
                 on_batch: BatchObserver | None = None, on_tick: TickObserver | None = None,
                 thread_init: Callable[[], None] | None = None,
                 name: str = "streamer-scheduler") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if min_tick < 0:
            raise ValueError(f"min_tick must be >= 0, got {min_tick}")
        self.models = models
        self.max_batch = max_batch
        self.min_tick = min_tick
        self.on_batch = on_batch
        self.on_tick = on_tick
        self._thread_init = thread_init
        self._jobs: list[_Job] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, make: Callable[[], Steps[Any]]) -> Future:
        """Run ``make()``'s steps in a coming tick; the future gets what they return, or
        the exception they (or ``make``) raised."""
        job = _Job(make)
        with self._condition:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._jobs.append(job)
            self._condition.notify()
        return job.future

    def close(self, wait: bool = True) -> None:
        """Serve the jobs already submitted, then stop the thread."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the thread --------------------------------------------------------------------

    def _serve(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        last = 0.0
        while True:
            with self._condition:
                while not self._jobs and not self._closed:
                    self._condition.wait()
                if not self._jobs:
                    return
            wait = last + self.min_tick - time.monotonic()
            if wait > 0 and not self._closed:
                time.sleep(wait)
            with self._condition:
                jobs, self._jobs = self._jobs, []
            last = time.monotonic()
            self._tick(jobs)
            if self.on_tick is not None:
                self.on_tick(len(jobs), time.monotonic() - last)

    def _tick(self, jobs: list[_Job]) -> None:
        started: list[_Job] = []
        steps: list[Steps[Any]] = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                steps.append(job.make())
            except Exception as error:  # noqa: BLE001 - the job's own error
                job.future.set_exception(error)
                continue
            started.append(job)
        try:
            outcomes = run_together(steps, self.models, max_batch=self.max_batch,
                                    on_batch=self.on_batch)
        except BaseException as error:  # a bug here must not leave a stream waiting
            logger.exception("scheduler tick failed")
            for job in started:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        for job, outcome in zip(started, outcomes):
            if outcome.error is not None:
                job.future.set_exception(outcome.error)
            else:
                job.future.set_result(outcome.value)


__all__ = ["TickObserver", "TickScheduler"]
