"""End to end on real speech: sample.wav through the server with the embedded preset gives
the same final turns as the engine run directly on the file (file mode)."""
from __future__ import annotations

import pytest

from tests.paths import SAMPLE
from tests.test_server_support import check_turn_invariants, finals, run, running_server, stream

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SAMPLE.exists(), reason=f"{SAMPLE} is absent"),
]


@pytest.fixture(scope="module")
def embedded():
    """The embedded preset, with torch on one intra-op thread in this (main) thread, as
    the server's worker threads run it (torch's default of one thread per core is many
    times slower for these small models on a busy 2-core machine)."""
    import torch

    from streamer.presets import load_frontend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_frontend("embedded")
    torch.set_num_threads(threads)


def test_sample_wav_through_the_server_equals_file_mode(embedded) -> None:
    from streamer.audio import load_audio
    from streamer.engine import diarize_array

    audio = load_audio(SAMPLE)
    expected, _ = diarize_array(embedded, audio)
    expected_turns = [(t.speaker, round(t.start, 3), round(t.end, 3)) for t in expected]

    async def body():
        async with running_server(embedded) as server:
            return await stream(server, audio, chunk=0.37)

    ready, events, code = run(body(), timeout=120)
    assert ready["models"]["preset"] == "embedded"
    assert code == 1000
    check_turn_invariants(events)
    assert len(expected_turns) >= 2
    assert finals(events) == expected_turns
    assert events[-1]["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    labels = {s["label"] for s in events[-1]["speakers"]}
    assert {speaker for speaker, _, _ in expected_turns} <= labels
    assert all(len(s["embedding"]) > 0 for s in events[-1]["speakers"])


def test_accurate_preset_through_the_server_equals_file_mode() -> None:
    """The packaged segmentation-3.0 + CAM++ preset behind the websocket: the same final
    turns as file mode, with sample.wav's two speakers."""
    import torch

    from streamer.audio import load_audio
    from streamer.engine import diarize_array
    from streamer.presets import load_frontend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        accurate = load_frontend("accurate")
        audio = load_audio(SAMPLE)
        expected, _ = diarize_array(accurate, audio)

        async def body():
            async with running_server(accurate) as server:
                return await stream(server, audio, chunk=0.37)

        ready, events, code = run(body(), timeout=180)
    finally:
        torch.set_num_threads(threads)
    assert ready["models"]["preset"] == "accurate"
    assert ready["models"]["embedding"] == "packaged:campplus"
    assert code == 1000
    check_turn_invariants(events)
    expected_turns = [(t.speaker, round(t.start, 3), round(t.end, 3)) for t in expected]
    assert finals(events) == expected_turns
    assert len({speaker for speaker, _, _ in expected_turns}) == 2
    assert all(len(s["embedding"]) == 192 for s in events[-1]["speakers"])
