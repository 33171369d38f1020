"""MicroBatcher: concurrent calls share forward passes and get exactly their own rows."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from streamer.server.batching import BatcherSet, BatchGroup, MicroBatcher

FACTOR = float(os.environ.get("STREAMER_TEST_TIMEOUT_FACTOR", "1"))


class RecordingModel:
    """A row-wise model that records the batch shapes it was called with."""

    def __init__(self, delay: float = 0.0) -> None:
        self.weights = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
        self.calls: list[tuple[int, ...]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, waveforms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        with self.lock:
            self.calls.append(waveforms.shape)
        if self.delay:
            time.sleep(self.delay)
        out = np.tanh(waveforms[..., :16] @ self.weights)
        if weights is not None:
            out = out * weights.mean(axis=-1, keepdims=True)
        return out


def _inputs(count: int, rows: int = 1, width: int = 16) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal((rows, width)).astype(np.float32) for _ in range(count)]


def _call_concurrently(fn, arguments: list[tuple]) -> list[np.ndarray]:
    barrier = threading.Barrier(len(arguments))

    def call(args: tuple) -> np.ndarray:
        barrier.wait()
        return fn(*args)

    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(call, arguments))


def test_concurrent_calls_share_one_pass_and_get_their_own_rows() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, name="m", max_batch=32, max_wait=0.2 * FACTOR)
    try:
        inputs = _inputs(12)
        results = _call_concurrently(batcher, [(x,) for x in inputs])
    finally:
        batcher.close()
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result, RecordingModel()(x), rtol=1e-6, atol=1e-6)
    assert len(model.calls) < len(inputs), "no call was batched with another"
    assert sum(shape[0] for shape in model.calls) == len(inputs)


def test_batches_never_exceed_max_batch_rows() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, name="m", max_batch=4, max_wait=0.1 * FACTOR)
    try:
        inputs = _inputs(10, rows=2)
        results = _call_concurrently(batcher, [(x,) for x in inputs])
    finally:
        batcher.close()
    assert all(shape[0] <= 4 for shape in model.calls)
    for x, result in zip(inputs, results):
        assert result.shape == (2, 4)
        np.testing.assert_allclose(result, RecordingModel()(x), rtol=1e-6, atol=1e-6)


def test_different_trailing_shapes_are_batched_separately() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, name="m", max_batch=32, max_wait=0.1 * FACTOR)
    try:
        inputs = _inputs(6, width=16) + _inputs(6, width=24)
        results = _call_concurrently(batcher, [(x,) for x in inputs])
    finally:
        batcher.close()
    assert {shape[1:] for shape in model.calls} == {(16,), (24,)}
    assert len(model.calls) < len(inputs)
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result, RecordingModel()(x), rtol=1e-6, atol=1e-6)


def test_optional_second_input_and_tuple_outputs() -> None:
    def pair_model(waveforms: np.ndarray, weights: np.ndarray | None = None):
        scale = 1.0 if weights is None else weights.sum(axis=1, keepdims=True)
        return waveforms * scale, waveforms.sum(axis=1)

    batcher = MicroBatcher(pair_model, name="pair", max_batch=32, max_wait=0.05 * FACTOR)
    try:
        inputs = _inputs(5, rows=3)
        weights = [np.full((3, 7), i, np.float32) for i in range(5)]
        with_weights = _call_concurrently(batcher, list(zip(inputs, weights)))
        without = _call_concurrently(batcher, [(x, None) for x in inputs])
    finally:
        batcher.close()
    for x, w, got, bare in zip(inputs, weights, with_weights, without):
        expected = pair_model(x, w)
        assert isinstance(got, tuple)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)
        np.testing.assert_allclose(bare[0], x, rtol=1e-6)


def test_a_failing_row_only_fails_its_own_caller() -> None:
    def picky(waveforms: np.ndarray) -> np.ndarray:
        if (waveforms == 666).any():
            raise ValueError("bad row")
        return waveforms * 2

    batcher = MicroBatcher(picky, name="picky", max_batch=32, max_wait=0.1 * FACTOR)
    inputs = _inputs(4)
    inputs[2] = np.full_like(inputs[2], 666)
    barrier = threading.Barrier(len(inputs))

    def call(x: np.ndarray):
        barrier.wait()
        try:
            return batcher(x)
        except ValueError as error:
            return error

    try:
        with ThreadPoolExecutor(len(inputs)) as pool:
            results = list(pool.map(call, inputs))
    finally:
        batcher.close()
    assert isinstance(results[2], ValueError)
    for index in (0, 1, 3):
        np.testing.assert_allclose(results[index], inputs[index] * 2)


def test_tracked_single_caller_does_not_wait_for_the_window() -> None:
    group = BatchGroup()
    batcher = MicroBatcher(RecordingModel(), name="m", max_batch=32, max_wait=2.0, group=group)
    try:
        with group.caller():
            started = time.monotonic()
            batcher(_inputs(1)[0])
            elapsed = time.monotonic() - started
    finally:
        batcher.close()
    assert elapsed < 1.0, f"a lone tracked caller waited {elapsed:.2f} s for company"


def test_untracked_calls_and_keyword_calls_still_work_after_close() -> None:
    model = RecordingModel()
    batcher = MicroBatcher(model, name="m", max_batch=8, max_wait=0.001)
    x = _inputs(1)[0]
    np.testing.assert_allclose(batcher(x, weights=None), model(x))
    batcher.close()
    np.testing.assert_allclose(batcher(x), model(x))


def test_batcher_set_wraps_and_reports_batches() -> None:
    seen: list[tuple[str, int, int]] = []
    batchers = BatcherSet(max_batch=16, max_wait=0.1 * FACTOR,
                          on_batch=lambda name, calls, rows, seconds: seen.append(
                              (name, calls, rows)))
    wrapped = batchers.wrap("model", RecordingModel())
    try:
        _call_concurrently(wrapped, [(x,) for x in _inputs(6)])
    finally:
        batchers.close()
    assert seen and all(name == "model" for name, _, _ in seen)
    assert sum(rows for _, _, rows in seen) == 6
    assert max(calls for _, calls, _ in seen) > 1


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_wait": -1.0}])
def test_bad_batcher_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(RecordingModel(), **kwargs)


def test_batches_of_different_shapes_run_in_parallel_threads() -> None:
    model = RecordingModel(delay=0.4)
    group = BatchGroup()
    batcher = MicroBatcher(model, name="m", max_batch=32, max_wait=0.05, group=group)
    inputs = _inputs(3, width=16) + _inputs(3, width=24)
    barrier = threading.Barrier(len(inputs))

    def call(x: np.ndarray) -> np.ndarray:
        with group.caller():
            barrier.wait()
            return batcher(x)

    started = time.monotonic()
    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(call, inputs))
    elapsed = time.monotonic() - started
    assert len(model.calls) == 2, model.calls
    assert elapsed < 0.75, f"two batches of 0.4 s took {elapsed:.2f} s: not in parallel"
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result, RecordingModel()(x), rtol=1e-6, atol=1e-6)
