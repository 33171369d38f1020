"""Model calls as values, so that one scheduler can batch them across streams.

A front end's per-stream code does not call its models: it *yields* a :class:`ModelCall`
(the model's name and its array inputs, batch first) and is sent the result back. The
code of one stream stays a plain sequence of steps, and whoever drives it decides how
the call is made:

* :func:`run_direct` calls the model at once (file mode, one stream);
* :func:`run_together` drives many streams in lockstep and makes one forward pass per
  model for all the streams that wait on it (the server's tick scheduler).

A front end names its batchable models in ``Frontend.models``: each takes numpy arrays
whose first axis is the batch (``None`` for an optional input left out) and returns an
array, or a tuple of arrays, with that same first axis.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Generator, Hashable, Mapping, Sequence, TypeVar

import numpy as np

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class ModelCall:
    """One call of the front end's model ``model`` on ``args`` (batch first)."""

    model: str
    args: tuple[np.ndarray | None, ...]

    @property
    def rows(self) -> int:
        first = self.args[0] if self.args else None
        return int(first.shape[0]) if isinstance(first, np.ndarray) and first.ndim else 1


#: Code that yields model calls and returns ``T`` (``result = yield from steps``).
Steps = Generator[ModelCall, Any, T]
#: The batchable models of a front end, by name.
Models = Mapping[str, Callable[..., Any]]
#: ``on_batch(model_name, calls, rows, seconds)``, after every forward pass.
BatchObserver = Callable[[str, int, int, float], None]


def run_direct(steps: Steps[T], models: Models) -> T:
    """Run ``steps`` alone, each model call as it comes; returns what ``steps`` returns."""
    try:
        call = next(steps)
        while True:
            call = steps.send(models[call.model](*call.args))
    except StopIteration as stop:
        return stop.value


def batch_key(call: ModelCall) -> Hashable | None:
    """What calls of one model must share to be concatenated (trailing shapes and dtypes
    of every input); ``None`` when the call cannot be batched."""
    args = call.args
    if not args or not isinstance(args[0], np.ndarray) or args[0].ndim < 1:
        return None
    rows = args[0].shape[0]
    key: list[Any] = [call.model]
    for arg in args:
        if arg is None:
            key.append(None)
        elif isinstance(arg, np.ndarray) and arg.ndim >= 1 and arg.shape[0] == rows:
            key.append((arg.shape[1:], arg.dtype.str))
        else:
            return None
    return tuple(key)


@dataclass
class Outcome:
    """How one driven job ended: its return value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


def run_together(jobs: Sequence[Steps[Any]], models: Models, *, max_batch: int = 64,
                 on_batch: BatchObserver | None = None) -> list[Outcome]:
    """Drive every job of ``jobs`` to its end, batching their model calls: in each round,
    the calls waiting on the same model with the same trailing shapes are concatenated
    (at most ``max_batch`` rows a pass) and each job is sent its own rows back.

    A job that raises ends with that error and the others go on; a batched pass that
    fails is retried call by call, so that only the job whose input fails gets the error.
    Returns one :class:`Outcome` per job, in order."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    outcomes = [Outcome() for _ in jobs]
    waiting: dict[int, ModelCall] = {}

    def advance(index: int, value: Any = None, error: BaseException | None = None) -> None:
        job = jobs[index]
        try:
            call = job.throw(error) if error is not None else job.send(value)
        except StopIteration as stop:
            outcomes[index].value = stop.value
        except Exception as failure:  # noqa: BLE001 - the job's own error, kept for it
            outcomes[index].error = failure
        else:
            waiting[index] = call

    for index in range(len(jobs)):
        advance(index)
    while waiting:
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for index, call in waiting.items():
            key = batch_key(call)
            groups[key if key is not None else ("alone", index)].append(index)
        calls, waiting = waiting, {}
        for members in groups.values():
            _run_group(members, calls, models, max_batch, on_batch, advance)
    return outcomes


def _run_group(members: list[int], calls: dict[int, ModelCall], models: Models,
               max_batch: int, on_batch: BatchObserver | None,
               advance: Callable[..., None]) -> None:
    """Forward passes for ``members`` (calls of one model and key), each of at most
    ``max_batch`` rows (a call with more rows runs on its own); each member is advanced."""
    batch: list[int] = []
    rows = 0
    for index in members:
        if batch and rows + calls[index].rows > max_batch:
            _forward(batch, calls, models, on_batch, advance)
            batch, rows = [], 0
        batch.append(index)
        rows += calls[index].rows
    if batch:
        _forward(batch, calls, models, on_batch, advance)


def _forward(batch: list[int], calls: dict[int, ModelCall], models: Models,
             on_batch: BatchObserver | None, advance: Callable[..., None]) -> None:
    name = calls[batch[0]].model
    started = time.monotonic()
    try:
        fn = models[name]
        if len(batch) == 1:
            outputs = [fn(*calls[batch[0]].args)]
        else:
            outputs = _concatenated(fn, name, [calls[index] for index in batch])
    except Exception as error:  # noqa: BLE001 - handed to the job(s) concerned
        if len(batch) == 1:
            advance(batch[0], error=error)
            return
        logger.warning("batched %s call of %d streams failed (%s); retrying one by one",
                       name, len(batch), error)
        for index in batch:
            _forward([index], calls, models, on_batch, advance)
        return
    if on_batch is not None:
        on_batch(name, len(batch), sum(calls[index].rows for index in batch),
                 time.monotonic() - started)
    for index, output in zip(batch, outputs):
        advance(index, output)


def _concatenated(fn: Callable[..., Any], name: str, calls: list[ModelCall]) -> list[Any]:
    args = []
    for position in range(len(calls[0].args)):
        parts = [call.args[position] for call in calls]
        args.append(None if parts[0] is None else np.concatenate(parts, axis=0))
    result = fn(*args)
    bounds = np.cumsum([call.rows for call in calls])[:-1]
    total = sum(call.rows for call in calls)
    if isinstance(result, (tuple, list)):
        pieces = [_split(item, bounds, total, name) for item in result]
        return [type(result)(items) for items in zip(*pieces)]
    return _split(result, bounds, total, name)


def _split(result: Any, bounds: np.ndarray, total: int, name: str) -> list[np.ndarray]:
    result = np.asarray(result)
    if result.ndim < 1 or result.shape[0] != total:
        raise ValueError(f"{name} returned shape {result.shape} for a batch of {total} rows")
    return np.split(result, bounds, axis=0)


__all__ = ["BatchObserver", "ModelCall", "Models", "Outcome", "Steps", "batch_key",
           "run_direct", "run_together"]
