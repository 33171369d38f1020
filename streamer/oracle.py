"""Oracle speaker tracking: how well a stream would do if tracking made no mistake.

The engine's error has two sources: the front end (speech it misses or invents, local
speakers that mix two voices, turn boundaries) and the tracking (local speakers mapped to
the wrong global speaker, voices merged or split, speakers opened late). To tell them
apart, :func:`oracle_state` runs a stream once and gives each reference speaker the mean
embedding of the local speakers found in its speech; :func:`diarize_with_oracle` then
streams the same audio again from a speaker memory seeded with exactly those speakers and
no room for others. The error left is mostly the front end's (speech missed or invented,
local speakers that mix voices, boundaries): about what tracking over these local
speakers could reach if it knew the voices from the start (``streamer eval
--oracle-tracking``). It is not a strict floor: a reference speaker whose speech holds
no local speaker of its own is not seeded, and one voice per speaker leaves the turn
builder's choices as they are.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from streamer.config import StreamConfig
from streamer.engine import (STATE_VERSION, StreamingDiarizer, chunked, run_engine,
                             state_identity, usable_locals)
from streamer.events import Turn, speaker_label
from streamer.models.base import BufferAnalysis, Frontend

#: Share of a local speaker's active frames that one reference speaker, alone, must
#: speak for the local speaker to count as that speaker's.
PURITY = 0.7
#: Weight of a seeded centroid, in local-speaker matches: so large that the matches of a
#: whole stream do not move it.
SEED_WEIGHT = 1e6
#: Seconds of audio per feed (as file mode feeds).
CHUNK = 5.0

Reference = list[tuple[float, float, str]]


class _Recorder(StreamingDiarizer):
    """An engine in file mode (as ``streamer eval`` runs files) that keeps every buffer's
    local speakers: ``(start seconds, analysis)``."""

    def __init__(self, frontend: Frontend, config: StreamConfig | None = None):
        self.buffers: list[tuple[float, BufferAnalysis]] = []
        super().__init__(frontend, config, file_mode=True)

    def _to_global(self, analysis: BufferAnalysis, first_sample: int):
        self.buffers.append((first_sample / self.sample_rate, analysis))
        return super()._to_global(analysis, first_sample)


def _stream(engine: StreamingDiarizer, samples: np.ndarray) -> list[Turn]:
    return run_engine(engine, chunked(samples, CHUNK, engine.sample_rate))[0]


def _speaking(reference: Reference, times: np.ndarray) -> list[set[str]]:
    return [{speaker for start, end, speaker in reference if start <= t < end} for t in times]


def oracle_centroids(frontend: Frontend, samples: np.ndarray, reference: Reference,
                     config: StreamConfig | None = None
                     ) -> tuple[dict[str, np.ndarray], list[Turn]]:
    """Per reference speaker, the unit mean of the embeddings of the local speakers that
    lie in its speech (at least ``PURITY`` of their active frames with that speaker alone
    speaking), over one stream of ``samples`` (16 kHz); speakers without any are left out.
    Also returns that stream's own final turns."""
    engine = _Recorder(frontend, config)
    turns = _stream(engine, samples)
    c = engine.config
    sums: dict[str, np.ndarray] = {}
    for start, analysis in engine.buffers:
        local = np.asarray(analysis.activations, np.float64)
        embeddings = np.asarray(analysis.embeddings, np.float64)
        if local.size == 0:
            continue
        times = start + analysis.frames.center(np.arange(len(local)))
        speaking = _speaking(reference, times)
        for k in np.flatnonzero(usable_locals(local, embeddings, c.tau_active)):
            active = np.flatnonzero(local[:, k] >= c.speech_threshold)
            if not len(active):
                continue
            alone = [next(iter(speaking[i])) for i in active if len(speaking[i]) == 1]
            if not alone:
                continue
            names, counts = np.unique(alone, return_counts=True)
            best = int(np.argmax(counts))
            if counts[best] >= PURITY * len(active):
                vector = embeddings[k] / max(np.linalg.norm(embeddings[k]), 1e-8)
                sums[names[best]] = sums.get(names[best], 0.0) + vector
    centroids = {name: total / max(np.linalg.norm(total), 1e-8)
                 for name, total in sorted(sums.items())}
    return centroids, turns


def oracle_state(frontend: Frontend, centroids: Iterable[np.ndarray]) -> dict:
    """A speaker state (:meth:`StreamingDiarizer.restore`) holding ``centroids`` as
    speakers whose matches cannot move them."""
    return {"version": STATE_VERSION, "model": state_identity(frontend),
            "speakers": [{"label": speaker_label(i),
                          "sum": [float(x) for x in SEED_WEIGHT * np.asarray(vector)],
                          "speech": 0.0}
                         for i, vector in enumerate(centroids)]}


def diarize_with_oracle(frontend: Frontend, samples: np.ndarray, reference: Reference,
                        config: StreamConfig | None = None
                        ) -> tuple[list[Turn], list[Turn], int]:
    """Stream ``samples`` twice: as usual, then with the speaker memory seeded by
    :func:`oracle_centroids` and no room for any other speaker. Returns the oracle run's
    final turns, the usual run's, and how many reference speakers were seeded (0: no
    local speaker lay in any one speaker's speech; the oracle run is then the usual)."""
    config = config or StreamConfig()
    centroids, usual = oracle_centroids(frontend, samples, reference, config)
    if not centroids:
        return usual, usual, 0
    seeded = dataclasses.replace(config, num_speakers=None, min_speakers=1,
                                 max_speakers=len(centroids))
    engine = StreamingDiarizer(frontend, seeded, file_mode=True)
    engine.restore(oracle_state(frontend, centroids.values()))
    return _stream(engine, samples), usual, len(centroids)


__all__ = ["PURITY", "diarize_with_oracle", "oracle_centroids", "oracle_state"]
