"""File mode: an audio file streamed through one engine, block by block.

The file is decoded a few seconds at a time (:class:`streamer.audio.AudioFile`) and fed to
the engine in fixed chunks, so memory stays flat however long the file is; the chunks are
those :func:`streamer.engine.diarize_array` would feed, so the turns are the same. With
more than one pass (:func:`streamer.engine.run_passes`; ``streamer diarize`` makes two by
default), the file is opened and streamed again for each.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from streamer.audio import AudioFile
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, run_passes
from streamer.events import Region, Turn
from streamer.models.base import Frontend


def diarize_file(frontend: Frontend, audio: AudioFile, config: StreamConfig | None = None,
                 chunk: float = 5.0, progress: Callable[[int], None] | None = None,
                 passes: int = 1) -> tuple[list[Turn], StreamingDiarizer]:
    """Stream an open audio file through a new engine (``passes`` times, see
    :func:`run_file`); returns its final turns and the engine (``engine.position`` is the
    file's duration in seconds)."""
    turns, _, engine = run_file(frontend, audio, config, chunk, progress, passes)
    return turns, engine


def run_file(frontend: Frontend, audio: AudioFile, config: StreamConfig | None = None,
             chunk: float = 5.0, progress: Callable[[int], None] | None = None,
             passes: int = 1) -> tuple[list[Turn], list[Region], StreamingDiarizer]:
    """Like :func:`diarize_file`, also returning the final regions of the opt-in
    ``config.outputs``. ``passes``: how many times the file is streamed (see
    :func:`streamer.engine.run_passes`; each pass after the first opens the file again);
    1, the default, gives the turns of one stream."""
    size = max(1, int(chunk * frontend.sample_rate))
    opened = [audio]

    def chunks() -> Iterator[np.ndarray]:
        if opened:
            yield from rechunk(opened.pop().blocks(), size)
            return
        with AudioFile(audio.path) as again:
            yield from rechunk(again.blocks(), size)

    return run_passes(frontend, chunks, config, progress, passes)


def rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The samples of ``blocks`` in chunks of exactly ``size`` (the last one shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        if count < size:
            continue
        joined = np.concatenate(pending)
        cut = count - count % size
        yield from (joined[i: i + size] for i in range(0, cut, size))
        pending, count = [joined[cut:].copy()], count - cut
    if count:
        yield np.concatenate(pending)


__all__ = ["diarize_file", "rechunk", "run_file"]
