"""The session's audio queue, without sockets: feeds on the engine's step grid, split at
the feed limit, and backpressure (pause past the limit, one warning per episode of falling
behind real time, resume at half the limit)."""
from __future__ import annotations

import numpy as np

from streamer.server.audioqueue import AudioQueue


def frames(count: int, size: int) -> list[np.ndarray]:
    return [np.full(size, float(i), np.float32) for i in range(count)]


def test_audio_waits_for_the_engines_next_step_and_says_when_it_became_due() -> None:
    queue = AudioQueue(max_pending=5.0)
    step = 8000
    for index, frame in enumerate(frames(2, 3000)):
        queue.add(frame, now=float(index))
    assert not queue.feedable(step)  # 6000 samples: short of the step, nothing to decide
    queue.add(frames(3, 3000)[2], now=2.0)
    assert queue.feedable(step)
    samples, due = queue.take(max_samples=32000, to_next_step=step)
    assert len(samples) == 9000 and due == 2.0  # the third frame completed the step
    assert np.array_equal(samples[6000:], np.full(3000, 2.0))
    assert not queue and queue.queued == 0
    # A stream's end or a paused reader feeds what is there, step or not.
    queue.add(np.ones(100, np.float32), now=3.0)
    assert not queue.feedable(step) and queue.feedable(step, input_done=True)


def test_a_feed_is_split_at_the_limit_keeping_order() -> None:
    queue = AudioQueue(max_pending=5.0)
    for index, frame in enumerate(frames(3, 5000)):
        queue.add(frame, now=float(index))
    first, due = queue.take(max_samples=7000, to_next_step=4000)
    second, later = queue.take(max_samples=7000, to_next_step=4000)
    assert len(first) == 7000 and len(second) == 7000 and queue.queued == 1000
    assert (due, later) == (0.0, 2.0)  # the second feed completes its step in frame 2
    assert np.array_equal(np.concatenate([first, second, queue.take(7000, 1)[0]]),
                          np.concatenate(frames(3, 5000)))


def test_backpressure_pauses_warns_once_per_episode_and_resumes_at_half() -> None:
    queue = AudioQueue(max_pending=1.0)
    second = np.zeros(16000, np.float32)
    assert not queue.add(second, now=0.0).pause
    # Sent faster than real time: reading pauses, but the stream is not behind.
    fast = queue.add(second, now=0.1)
    assert fast.pause and not fast.warn and queue.paused and queue.feedable(8000)
    # Ten seconds on, nothing processed: behind real time, one warning.
    late = queue.add(second, now=10.0)
    assert late.pause and late.warn and late.behind == queue.backlog == 3.0
    assert not queue.add(second, now=11.0).warn
    assert queue.done(16000 * 2) is False  # 2 s left: above half the limit
    assert queue.done(16000 * 2 - 8000) is True and not queue.paused
    # A new episode (behind again after catching up) warns again.
    again = queue.add(second, now=12.0)
    assert again.pause and again.warn and again.behind == queue.backlog == 1.5
    assert queue.behind(12.0) == 1.5 and queue.behind(100.0) == queue.backlog
