"""Model calls batched across streams: run_together and the server's TickScheduler."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.audio import load_audio
from streamer.config import DEFAULT_LATENCY, StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.models.calls import ModelCall, run_direct, run_together
from streamer.models.embedded import EmbeddedFrontend
from streamer.scheduler import TickScheduler

AUDIO = Path(__file__).parent / "data" / "two_voices.wav"


class Doubler:
    """A batchable model that records the rows of each pass and fails on NaN rows."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def __call__(self, x: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        if np.isnan(x).any():
            raise ValueError("NaN input")
        self.passes.append(len(x))
        return 2 * x if extra is None else (2 * x, x + extra)


def job(values: list[float], width: int = 1):
    """Steps that call ``double`` once per value and return the results."""
    results = []
    for value in values:
        row = yield ModelCall("double", (np.full((1, width), value, np.float32),))
        results.append(float(row[0, 0]))
    return results


def no_calls(value):
    """Steps that call no model and return ``value``."""
    return value
    yield  # makes this a generator


def test_each_job_gets_its_own_rows_from_one_pass_per_round() -> None:
    model = Doubler()
    outcomes = run_together([job([1, 2]), job([3, 4]), job([5])], {"double": model})
    assert [o.result() for o in outcomes] == [[2, 4], [6, 8], [10]]
    assert model.passes == [3, 2]  # round 1: three jobs in one pass; round 2: two


def test_passes_hold_at_most_max_batch_rows() -> None:
    model = Doubler()
    outcomes = run_together([job([i]) for i in range(7)], {"double": model}, max_batch=3)
    assert [o.result() for o in outcomes] == [[2 * i] for i in range(7)]
    assert model.passes == [3, 3, 1]


def test_other_trailing_shapes_and_unbatchable_calls_run_apart() -> None:
    model = Doubler()

    def scalar():
        return (yield ModelCall("double", (3.0,)))

    outcomes = run_together([job([1], width=1), job([2], width=2), job([3], width=1),
                             scalar()], {"double": lambda x: 2 * np.asarray(x) if np.ndim(x)
                                         == 0 else model(x)})
    assert [o.result() for o in outcomes] == [[2], [4], [6], 6.0]
    assert sorted(model.passes) == [1, 2]  # widths 1 together, width 2 alone


def test_optional_inputs_and_tuple_outputs_are_split_per_job() -> None:
    def pair(value: float):
        doubled, summed = yield ModelCall("double", (np.full((2, 1), value, np.float32),
                                                     np.ones((2, 1), np.float32)))
        return doubled.ravel().tolist(), summed.ravel().tolist()

    model = Doubler()
    outcomes = run_together([pair(1.0), pair(5.0)], {"double": model})
    assert [o.result() for o in outcomes] == [([2, 2], [2, 2]), ([10, 10], [6, 6])]
    assert model.passes == [4]


def test_a_failing_input_or_job_only_fails_its_own_job() -> None:
    model = Doubler()

    def crashing():
        yield ModelCall("double", (np.ones((1, 1), np.float32),))
        raise RuntimeError("bug in this stream")

    def catching():
        try:
            yield ModelCall("double", (np.full((1, 1), np.nan, np.float32),))
        except ValueError as error:
            return f"caught {error}"

    outcomes = run_together([job([1, 2]), job([float("nan")]), crashing(), catching(),
                             no_calls(7)], {"double": model})
    assert outcomes[0].result() == [2, 4]
    with pytest.raises(ValueError, match="NaN"):
        outcomes[1].result()
    with pytest.raises(RuntimeError, match="bug in this stream"):
        outcomes[2].result()
    assert outcomes[3].result() == "caught NaN input"
    assert outcomes[4].result() == 7


def test_a_model_that_breaks_on_batches_still_serves_each_job_alone(caplog) -> None:
    outcomes = run_together([job([1]), job([2])], {"double": lambda x: 2 * x[:1]})
    assert [o.result() for o in outcomes] == [[2], [4]]
    assert "returned shape (1, 1) for a batch of 2 rows" in caplog.text


def test_run_direct_calls_each_model_at_once() -> None:
    model = Doubler()
    assert run_direct(job([1, 2, 3]), {"double": model}) == [2, 4, 6]
    assert model.passes == [1, 1, 1]


def test_scheduler_serves_waiting_jobs_in_one_tick() -> None:
    model = Doubler()
    ticks: list[int] = []
    scheduler = TickScheduler({"double": model}, min_tick=0.3,
                              on_tick=lambda jobs, seconds: ticks.append(jobs))
    try:
        first = scheduler.submit(lambda: job([1]))
        assert first.result(timeout=10) == [2]
        # submitted while the scheduler waits out min_tick: one tick serves them all
        futures = [scheduler.submit(lambda v=v: job([v, v])) for v in range(5)]
        assert [f.result(timeout=10) for f in futures] == [[2 * v, 2 * v] for v in range(5)]
    finally:
        scheduler.close()
    assert ticks == [1, 5]
    assert model.passes == [1, 5, 5]


def test_scheduler_reports_errors_to_their_own_job_and_goes_on() -> None:
    scheduler = TickScheduler({"double": Doubler()})

    def broken_setup():
        raise RuntimeError("cannot start")

    try:
        bad = scheduler.submit(broken_setup)
        nan = scheduler.submit(lambda: job([float("nan")]))
        good = scheduler.submit(lambda: job([4]))
        with pytest.raises(RuntimeError, match="cannot start"):
            bad.result(timeout=10)
        with pytest.raises(ValueError, match="NaN"):
            nan.result(timeout=10)
        assert good.result(timeout=10) == [8]
        assert scheduler.submit(lambda: job([1])).result(timeout=10) == [2]
    finally:
        scheduler.close()


def test_scheduler_close_serves_what_was_submitted_then_refuses() -> None:
    release = threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        release.wait(10)
        return 2 * x

    scheduler = TickScheduler({"double": slow})
    first = scheduler.submit(lambda: job([1]))
    time.sleep(0.1)  # the first tick is under way
    second = scheduler.submit(lambda: job([2]))
    closing = threading.Thread(target=scheduler.close)
    closing.start()
    release.set()
    closing.join(10)
    assert first.result(timeout=1) == [2] and second.result(timeout=1) == [4]
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(lambda: job([3]))


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"min_tick": -0.1}])
def test_bad_scheduler_settings_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TickScheduler({}, **kwargs)


@pytest.fixture(scope="module")
def embedded() -> EmbeddedFrontend:
    return EmbeddedFrontend()


def test_real_streams_batched_together_give_file_mode_turns(embedded) -> None:
    """Three streams of the embedded preset, from different start points and fed in
    different chunk sizes, driven through one scheduler: every model pass but the first
    serves several streams, and each stream's turns equal file mode's at the same latency."""
    audio = load_audio(str(AUDIO))
    signals = [np.roll(audio, shift) for shift in (0, 16000 * 3, 16000 * 7)]
    chunks = (8000, 3200, 12000)
    live = StreamConfig(latency=DEFAULT_LATENCY)  # file mode at a live stream's latency
    expected = [[t.to_dict() for t in diarize_array(embedded, s, live)[0]] for s in signals]
    passes: list[tuple[str, int]] = []
    scheduler = TickScheduler(embedded.models, min_tick=0.02,
                              on_batch=lambda name, streams, rows, s: passes.append(
                                  (name, streams)))
    engines = [StreamingDiarizer(embedded) for _ in signals]
    got: list[list[dict]] = [[] for _ in signals]

    def keep(index: int, events: list) -> None:
        got[index] += [e.to_dict() for e in events if getattr(e, "final", False)]

    try:
        offsets = [0] * len(signals)
        while any(o < len(s) for o, s in zip(offsets, signals)):
            futures = {}
            for i, (engine, signal) in enumerate(zip(engines, signals)):
                if offsets[i] < len(signal):
                    piece = signal[offsets[i]:offsets[i] + chunks[i]]
                    offsets[i] += chunks[i]
                    futures[i] = scheduler.submit(lambda e=engine, p=piece: e.feed_steps(p))
            for i, future in futures.items():
                keep(i, future.result(timeout=60))
        for i, future in enumerate([scheduler.submit(e.flush_steps) for e in engines]):
            keep(i, future.result(timeout=60))
    finally:
        scheduler.close()
    assert all(expected) and got == expected
    assert max(streams for name, streams in passes if name == "ge2e") >= 2
    assert max(streams for name, streams in passes if name == "vad") == 3
