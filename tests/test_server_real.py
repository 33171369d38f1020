"""End to end on real speech: sample.wav through the server with the embedded and the
accurate presets gives the same final turns as the engine run directly on the file (file
mode)."""
from __future__ import annotations

import pytest

from tests.paths import SAMPLE
from tests.test_server_support import check_turn_invariants, finals, run, running_server, stream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} is absent"),
]


@pytest.fixture(scope="module", params=["embedded", "accurate"])
def frontend(request):
    """A preset, with torch on one intra-op thread in this (main) thread, as the server's
    worker threads run it (torch's default of one thread per core is many times slower
    for these small models on a busy 2-core machine)."""
    import torch

    from streamer.presets import load_frontend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_frontend(request.param)
    torch.set_num_threads(threads)


def test_sample_wav_through_the_server_equals_file_mode(frontend) -> None:
    """The embedded preset, and the packaged segmentation-3.0 + CAM++ one, behind the
    websocket: the same final turns as file mode at the live latency, with sample.wav's two
    speakers."""
    from streamer.audio import load_audio
    from streamer.config import DEFAULT_LATENCY, StreamConfig
    from streamer.engine import diarize_array

    audio = load_audio(SAMPLE)
    # file mode at the live latency (file mode's own default decides later)
    expected, _ = diarize_array(frontend, audio, StreamConfig(latency=DEFAULT_LATENCY))
    expected_turns = [(t.speaker, round(t.start, 3), round(t.end, 3)) for t in expected]

    async def body():
        async with running_server(frontend) as server:
            return await stream(server, audio, chunk=0.37)

    ready, events, code = run(body(), timeout=120 if frontend.name == "embedded" else 180)
    assert ready["models"]["preset"] == frontend.name
    assert ready["models"]["embedding"] == frontend.describe()["embedding"]
    assert code == 1000
    check_turn_invariants(events)
    assert len(expected_turns) >= 2
    assert finals(events) == expected_turns
    assert len({speaker for speaker, _, _ in expected_turns}) == 2
    assert events[-1]["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    labels = {s["label"] for s in events[-1]["speakers"]}
    assert {speaker for speaker, _, _ in expected_turns} <= labels
    dimension = frontend.describe()["embedding_dimension"]
    assert all(len(s["embedding"]) == dimension for s in events[-1]["speakers"])
    if frontend.name == "accurate":
        assert ready["models"]["embedding"] == "packaged:campplus" and dimension == 192


def test_concurrent_streams_share_model_passes_and_keep_file_mode_turns() -> None:
    """Three streams of sample.wav from different start points at once (embedded
    preset): the scheduler runs their model calls in shared passes, and each stream
    still gets file mode's turns."""
    import asyncio
    import re

    import numpy as np

    from streamer.audio import load_audio
    from streamer.config import DEFAULT_LATENCY, StreamConfig
    from streamer.engine import diarize_array
    from streamer.presets import load_frontend

    frontend = load_frontend("embedded")
    audio = load_audio(SAMPLE)
    signals = [np.roll(audio, 16000 * shift) for shift in (0, 5, 11)]
    live = StreamConfig(latency=DEFAULT_LATENCY)  # file mode at the live latency
    expected = [[(t.speaker, round(t.start, 3), round(t.end, 3))
                 for t in diarize_array(frontend, signal, live)[0]] for signal in signals]

    async def body():
        async with running_server(frontend, min_tick=0.05) as server:
            results = await asyncio.gather(*(stream(server, signal, chunk=0.25)
                                              for signal in signals))
            return results, server.metrics.render()

    results, metrics = run(body(), timeout=180)
    for (ready, events, code), want in zip(results, expected):
        assert code == 1000 and len(want) >= 2
        assert finals(events) == want
    shared = re.search(r'^streamer_batch_streams_bucket\{model="vad",le="1"\} (\d+)$',
                       metrics, re.M)
    total = re.search(r'^streamer_batch_streams_count\{model="vad"\} (\d+)$', metrics, re.M)
    assert shared and total and int(shared.group(1)) < int(total.group(1)), \
        "no VAD pass was shared by two streams"
