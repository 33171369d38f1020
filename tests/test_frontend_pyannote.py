"""The pyannote front end in the streaming engine (small random weights made here).

Streams reuse the segmentation's first-layer work of their previous step; that must change
nothing but the compute: not the analysis of a buffer, not the engine's events, not when
the calls of several streams are batched together.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.audio import load_audio
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer
from streamer.models.frontend import SegmentationEmbeddingFrontend
from streamer.models.pyannote import load_embedding, load_segmentation
from streamer.models.calls import run_direct, run_together
from tests.checkpoints import write_checkpoint

AUDIO = Path(__file__).parent / "data" / "two_voices.wav"
RATE = 16000
#: The random segmentation's activations sit around 0.4-0.5: lower thresholds let local
#: speakers count as active and speaking, so the embedding path runs and turns come out.
CONFIG = StreamConfig(tau_active=0.3, speech_threshold=0.3)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    root = tmp_path_factory.mktemp("frontend-models")
    segmentation = load_segmentation(write_checkpoint(root / "seg" / "pytorch_model.bin",
                                                      "segmentation-3.0"))
    embedding = load_embedding(write_checkpoint(root / "emb" / "pytorch_model.bin", "wespeaker"))
    return segmentation, embedding


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return load_audio(str(AUDIO))


def _frontend(models: tuple[object, object], reuse: bool) -> SegmentationEmbeddingFrontend:
    frontend = SegmentationEmbeddingFrontend(*models)
    assert frontend.reuse_responses  # pyannote models on CPU offer it
    frontend.reuse_responses = reuse
    return frontend


def _analyses(stream, audio: np.ndarray, steps: int, offset: int = 0) -> list:
    size, hop = 10 * RATE, RATE // 2
    models = stream.frontend.models
    return [run_direct(stream.analyze(audio[offset + i * hop: offset + i * hop + size],
                                      i * hop / RATE), models)
            for i in range(steps)]


def _assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.activations, b.activations, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-4, rtol=0)  # NaN == NaN
        assert a.frames == b.frames


def test_reuse_gives_the_same_analyses_and_events(models, audio: np.ndarray) -> None:
    reused = _frontend(models, True).stream(CONFIG)
    full = _frontend(models, False).stream(CONFIG)
    assert full.responses is None
    first, second = _analyses(reused, audio, 12), _analyses(full, audio, 12)
    _assert_same(first, second)
    assert reused.responses.reused_frames == 11 * (15975 - 800)
    assert any(np.isfinite(a.embeddings).any() for a in first)  # embeddings were computed

    events = {}
    for reuse in (True, False):
        engine = StreamingDiarizer(_frontend(models, reuse), CONFIG)
        out = []
        for start in range(0, len(audio), 5000):  # chunks that do not match the 0.5 s step
            out += engine.feed(audio[start:start + 5000])
        out += engine.flush()
        events[reuse] = [turn.to_dict() for turn in out]
    assert events[True] == events[False] and events[True]


def test_reuse_when_streams_are_batched_together(models, audio: np.ndarray) -> None:
    """Two streams whose calls are batched together get their own results."""
    offsets = (0, 5 * RATE)
    expected = [_analyses(_frontend(models, False).stream(CONFIG), audio, 6, offset)
                for offset in offsets]
    batches: list[tuple[str, int]] = []
    frontend = _frontend(models, True)
    streams = [frontend.stream(CONFIG) for _ in offsets]
    results: list[list] = [[], []]
    for step in range(6):
        jobs = [stream.analyze(audio[offset + step * RATE // 2:
                                     offset + step * RATE // 2 + 10 * RATE], step / 2)
                for stream, offset in zip(streams, offsets)]
        outcomes = run_together(jobs, frontend.models, on_batch=lambda name, streams, rows,
                                seconds: batches.append((name, rows)))
        for got, outcome in zip(results, outcomes):
            got.append(outcome.result())
    for got, want in zip(results, expected):
        _assert_same(got, want)
    # both streams' chunks went through one pass
    assert ("segmentation_responses", 2) in batches
    assert all(stream.responses.reused_frames == 5 * (15975 - 800) for stream in streams)


def test_pyannote_models_through_the_server(models, audio: np.ndarray) -> None:
    """Two concurrent streams through a real server (model calls batched per tick, streams
    reusing their first-layer work): each gets the turns of file mode."""
    import asyncio

    from streamer.engine import diarize_array
    from tests.test_server_support import finals, run, running_server, stream

    clip = audio[:15 * RATE]
    config = {"tau_active": 0.3, "speech_threshold": 0.3}
    expected, _ = diarize_array(_frontend(models, False), clip, StreamConfig(**config))
    expected_turns = [(t.speaker, round(t.start, 3), round(t.end, 3)) for t in expected]
    assert expected_turns

    async def body():
        async with running_server(_frontend(models, True)) as server:
            return await asyncio.gather(*(stream(server, clip, chunk=0.37, config=config)
                                          for _ in range(2)))

    for ready, events, code in run(body(), timeout=180):
        assert ready["models"]["reuses_filterbank"] is True
        assert ready["models"]["embedding_precision"] == "fp32"
        assert code == 1000 and finals(events) == expected_turns
