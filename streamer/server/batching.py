"""Cross-connection micro-batching of model calls.

Every stream runs its engine in a worker thread; when several of them call the same model
at about the same time, :class:`MicroBatcher` concatenates their inputs along the batch
axis, runs one forward pass, and hands each caller its own rows back. A batch is sent as
soon as it holds ``max_batch`` rows, or every active caller is waiting on a model (no one
else can join), or the oldest call has waited ``max_wait`` seconds.

The batchers of one server share a :class:`BatchGroup`, which counts the callers that may
call a model (worker threads inside an engine call) and those waiting on a batch.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: ``on_batch(model_name, calls, rows, seconds)`` is called after every forward pass.
BatchObserver = Callable[[str, int, int, float], None]


class BatchGroup:
    """Shared state of the batchers of one process: one lock, and who may still call."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        #: Threads inside an engine call (that may call a model).
        self.active = 0
        #: Calls queued in some batcher of the group, not yet taken into a batch.
        self.waiting = 0
        self.tracked = False

    @contextlib.contextmanager
    def caller(self) -> Iterator[None]:
        """Mark the current thread as one that may call a batched model (an engine call)."""
        with self.condition:
            self.tracked = True
            self.active += 1
        try:
            yield
        finally:
            with self.condition:
                self.active -= 1
                self.condition.notify_all()

    def nobody_else_can_join(self) -> bool:
        """Every active caller is already waiting on some batch (call with the lock)."""
        return self.tracked and self.waiting >= self.active


@dataclass
class _Call:
    args: tuple[np.ndarray | None, ...]
    key: Hashable
    rows: int
    queued: float
    future: Future = field(default_factory=Future)
    taken: bool = False


def _batch_key(args: Sequence[Any]) -> Hashable | None:
    """What calls must share to be concatenated; ``None`` when the call cannot be batched."""
    if not args or not isinstance(args[0], np.ndarray) or args[0].ndim < 1:
        return None
    rows = args[0].shape[0]
    key = []
    for arg in args:
        if arg is None:
            key.append(None)
        elif isinstance(arg, np.ndarray) and arg.ndim >= 1 and arg.shape[0] == rows:
            key.append((arg.shape[1:], arg.dtype.str))
        else:
            return None
    return tuple(key)


class MicroBatcher:
    """Wraps a batchable model callable so that concurrent calls share forward passes.

    ``fn(*arrays)`` takes numpy arrays whose first axis is the batch (``None`` allowed
    for optional inputs) and returns an array, or a tuple of arrays, with the same first
    axis. Calls whose arrays differ in trailing shape or dtype are batched separately;
    calls with keyword arguments or non-array inputs run on their own, unbatched.

    There is no dispatcher thread: the first caller of a batch leads it (waits for
    others to join, then runs the forward pass in its own thread and hands the results
    out), so several batches can run at once on several cores.
    """

    def __init__(self, fn: Callable[..., Any], *, name: str = "model", max_batch: int = 32,
                 max_wait: float = 0.005, group: BatchGroup | None = None,
                 on_batch: BatchObserver | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        self.fn = fn
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.group = group if group is not None else BatchGroup()
        self.on_batch = on_batch
        self._queue: deque[_Call] = deque()
        self._leading: set[Hashable] = set()
        self._closed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = None if kwargs else _batch_key(args)
        if key is None or self._closed:
            return self.fn(*args, **kwargs)
        call = _Call(args=args, key=key, rows=args[0].shape[0], queued=time.monotonic())
        batch = self._join(call)
        if batch is not None:
            self._execute(batch)
        return call.future.result()

    def close(self) -> None:
        """From now on, calls run directly (unbatched)."""
        with self.group.condition:
            self._closed = True
            self.group.condition.notify_all()

    # -- batching ----------------------------------------------------------------------

    def _join(self, call: _Call) -> list[_Call] | None:
        """Queue ``call``; returns the batch to run if this thread leads one, else None
        once another thread has taken ``call`` into its batch."""
        condition = self.group.condition
        with condition:
            self._queue.append(call)
            self.group.waiting += 1
            condition.notify_all()
            while not call.taken:
                if call.key not in self._leading:
                    return self._lead(call)
                condition.wait()
            return None

    def _lead(self, call: _Call) -> list[_Call]:
        """Wait (lock held) until the batch is full, nobody else can join, or the window
        is over; then take the batch."""
        condition = self.group.condition
        self._leading.add(call.key)
        deadline = call.queued + self.max_wait
        while not self._closed:
            rows = sum(c.rows for c in self._queue if c.key == call.key)
            remaining = deadline - time.monotonic()
            if rows >= self.max_batch or remaining <= 0 or self.group.nobody_else_can_join():
                break
            condition.wait(remaining)
        batch = self._take(call)
        self._leading.discard(call.key)
        condition.notify_all()
        return batch

    def _take(self, first: _Call) -> list[_Call]:
        batch, kept, rows = [first], deque(), first.rows
        for call in self._queue:
            if call is first:
                continue
            if call.key == first.key and rows + call.rows <= self.max_batch:
                batch.append(call)
                rows += call.rows
            else:
                kept.append(call)
        self._queue = kept
        for call in batch:
            call.taken = True
        self.group.waiting -= len(batch)
        return batch

    def _execute(self, batch: list[_Call]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as error:  # never leave a follower waiting
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(error)
            raise

    def _run_batch(self, batch: list[_Call]) -> None:
        started = time.monotonic()
        try:
            outputs = self._forward(batch)
        except Exception as error:  # noqa: BLE001 - handed to the callers
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            logger.warning("batched %s call of %d failed (%s); retrying one by one",
                           self.name, len(batch), error)
            for call in batch:
                self._run_batch([call])
            return
        if self.on_batch is not None:
            self.on_batch(self.name, len(batch), sum(c.rows for c in batch),
                          time.monotonic() - started)
        for call, output in zip(batch, outputs):
            call.future.set_result(output)

    def _forward(self, batch: list[_Call]) -> list[Any]:
        if len(batch) == 1:
            return [self.fn(*batch[0].args)]
        args = []
        for position in range(len(batch[0].args)):
            parts = [call.args[position] for call in batch]
            args.append(None if parts[0] is None else np.concatenate(parts, axis=0))
        result = self.fn(*args)
        bounds = np.cumsum([call.rows for call in batch])[:-1]
        total = int(sum(call.rows for call in batch))
        if isinstance(result, (tuple, list)):
            pieces = [_split(item, bounds, total, self.name) for item in result]
            return [type(result)(items) for items in zip(*pieces)]
        return _split(result, bounds, total, self.name)


def _split(result: Any, bounds: np.ndarray, total: int, name: str) -> list[np.ndarray]:
    result = np.asarray(result)
    if result.ndim < 1 or result.shape[0] != total:
        raise ValueError(f"{name} returned shape {result.shape} for a batch of {total} rows")
    return np.split(result, bounds, axis=0)


class BatcherSet:
    """The batchers of one frontend; ``wrap`` is the hook given to ``Frontend.map_models``."""

    def __init__(self, *, max_batch: int, max_wait: float,
                 on_batch: BatchObserver | None = None) -> None:
        self.group = BatchGroup()
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self.batchers: list[MicroBatcher] = []

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        batcher = MicroBatcher(fn, name=name, max_batch=self.max_batch, max_wait=self.max_wait,
                               group=self.group, on_batch=self.on_batch)
        self.batchers.append(batcher)
        return batcher

    def close(self) -> None:
        for batcher in self.batchers:
            batcher.close()


__all__ = ["BatchGroup", "BatcherSet", "MicroBatcher"]
