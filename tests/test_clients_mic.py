"""The microphone client with a fake sounddevice: device choice, and a stream through a real server."""
from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import clients.mic as mic  # noqa: E402
from clients.common import final_turns  # noqa: E402
from tests.test_clients_file import SAMPLE, needs_sample, streamer_serve_process  # noqa: E402


class FakePortAudioError(Exception):
    pass


def fake_sounddevice(devices: list[dict[str, Any]], supported: set[tuple[int, int, int]]) -> SimpleNamespace:
    """A stand-in for the sounddevice module; ``supported`` holds (device, rate, channels)."""

    def query_devices(device: int | str | None = None, kind: str | None = None) -> Any:
        if device is None and kind is None:
            return devices
        index = 0 if device is None else device
        if isinstance(index, str):
            index = next((i for i, d in enumerate(devices) if index in d["name"]), -1)
        if not 0 <= index < len(devices) or devices[index]["max_input_channels"] <= 0:
            raise ValueError(f"no input device matching {device!r}")
        return devices[index]

    def check_input_settings(device: int | str | None, samplerate: int, channels: int, dtype: str) -> None:
        index = devices.index(query_devices(device, "input"))
        if (index, samplerate, channels) not in supported:
            raise FakePortAudioError("Invalid sample rate")

    return SimpleNamespace(
        query_devices=query_devices,
        check_input_settings=check_input_settings,
        PortAudioError=FakePortAudioError,
        default=SimpleNamespace(device=(0, 1)),
    )


DEVICES = [
    {"name": "Built-in Microphone", "max_input_channels": 2, "default_samplerate": 44100.0},
    {"name": "Speakers", "max_input_channels": 0, "default_samplerate": 48000.0},
    {"name": "USB Headset", "max_input_channels": 1, "default_samplerate": 48000.0},
]


def test_pick_input_settings_prefers_16k_mono_then_the_device_default(monkeypatch: pytest.MonkeyPatch) -> None:
    supported = {(0, 44100, 2), (0, 16000, 2), (2, 16000, 1), (2, 48000, 1)}
    monkeypatch.setattr(mic, "_sounddevice", lambda: fake_sounddevice(DEVICES, supported))
    assert mic.pick_input_settings(None) == (16000, 2, "Built-in Microphone")
    assert mic.pick_input_settings(mic.parse_device("USB")) == (16000, 1, "USB Headset")
    monkeypatch.setattr(mic, "_sounddevice", lambda: fake_sounddevice(DEVICES, {(0, 44100, 2)}))
    assert mic.pick_input_settings(mic.parse_device("0")) == (44100, 2, "Built-in Microphone")
    with pytest.raises(mic.MicError, match="no input device"):
        mic.pick_input_settings(1)
    monkeypatch.setattr(mic, "_sounddevice", lambda: fake_sounddevice(DEVICES, set()))
    with pytest.raises(mic.MicError, match="accepts none"):
        mic.pick_input_settings(None)


def test_list_devices_shows_inputs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mic, "_sounddevice", lambda: fake_sounddevice(DEVICES, set()))
    listing = mic.list_devices()
    assert "Built-in Microphone" in listing and "USB Headset" in listing and "Speakers" not in listing
    assert listing.splitlines()[0].startswith("*")
    assert mic.main(["--list-devices"]) == 0


class FakeInputStream:
    """Plays int16 audio through the callback from a thread, like PortAudio would: as fast
    as it can, or at ``speed`` x real time."""

    def __init__(self, audio: np.ndarray, on_done: Any, speed: float | None = None,
                 **kwargs: Any) -> None:
        self.audio, self.on_done, self.speed, self.kwargs = audio, on_done, speed, kwargs
        self.thread = threading.Thread(target=self._play, daemon=True)
        self.stopped = threading.Event()
        self.closed = False

    def _play(self) -> None:
        block = self.kwargs["blocksize"]
        pause = block / self.kwargs["samplerate"] / self.speed if self.speed else 0.0
        for index, offset in enumerate(range(0, len(self.audio), block)):
            if self.stopped.wait(pause) if pause else self.stopped.is_set():
                return
            frames = self.audio[offset : offset + block]
            status = "input overflow" if index == 3 else None
            self.kwargs["callback"](frames.tobytes(), len(frames), None, status)
        self.on_done()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def stream_url() -> Iterator[str]:
    with streamer_serve_process() as base:
        yield base.replace("http://", "ws://") + "/v1/stream"


@needs_sample
def test_stream_microphone_sends_everything_captured_and_gets_the_end(stream_url: str) -> None:
    audio, rate = sf.read(SAMPLE, dtype="int16", frames=16000 * 12)
    streams: list[FakeInputStream] = []
    stats: dict[str, int] = {}

    async def run() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def factory(**kwargs: Any) -> FakeInputStream:
            assert kwargs["samplerate"] == rate and kwargs["dtype"] == "int16" and kwargs["channels"] == 1
            streams.append(FakeInputStream(audio, lambda: loop.call_soon_threadsafe(stop.set), **kwargs))
            return streams[-1]

        return await mic.stream_microphone(
            stream_url, rate, 1, stop_event=stop, stream_factory=factory, stats=stats
        )

    events = asyncio.run(asyncio.wait_for(run(), 60))
    assert streams and streams[0].closed
    assert stats == {"blocks": 120, "overflows": 1}
    assert events[0]["type"] == "ready" and events[-1]["type"] == "end"
    assert events[-1]["duration"] == pytest.approx(12.0, abs=0.01)  # every captured block was sent
    assert final_turns(events), "12 s of conversation gave no final turn"


def test_a_broken_microphone_ends_the_stream_at_once(stream_url: str) -> None:
    def factory(**kwargs: Any) -> FakeInputStream:
        raise FakePortAudioError("Error opening InputStream: Device unavailable")

    async def run() -> list[dict[str, Any]]:
        return await mic.stream_microphone(stream_url, 16000, stream_factory=factory)

    with pytest.raises(mic.MicError, match="Device unavailable"):
        asyncio.run(asyncio.wait_for(run(), 10))
