"""Stream your microphone to a streamer server and watch who speaks, live.

    python clients/mic.py --list-devices
    python clients/mic.py --device 2 --url ws://127.0.0.1:8000/v1/stream

Captures 16-bit PCM at 16 kHz when the device supports it, else at the device's default
rate (the server resamples). Interim turns are redrawn in place, final turns get a line of
their own, one colour per speaker. Ctrl-C stops: the server flushes the last turns and
sends a summary of the speakers. Needs the PortAudio library (Debian: libportaudio2).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake

if __package__ in (None, ""):  # run as a script: python clients/mic.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clients.common import (  # noqa: E402
    DEFAULT_URL,
    EventCallback,
    StreamError,
    TurnPrinter,
    default_token,
    install_stop_handler,
    json_object,
    start_message,
    stream_resuming,
)

PREFERRED_RATE = 16000
MIN_RATE, MAX_RATE = 8000, 48000  # what the server accepts
BLOCK_SECONDS = 0.1

# callback(raw int16 interleaved bytes, frames, time info, status flags)
AudioCallback = Callable[[Any, int, Any, Any], None]


class MicError(RuntimeError):
    """The microphone cannot be opened (no PortAudio, no such device, no usable rate)."""


class InputStream(Protocol):
    """What :func:`stream_microphone` needs of ``sounddevice.RawInputStream``."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


StreamFactory = Callable[..., InputStream]


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # raised at import when libportaudio is missing
        raise MicError(f"{exc} (install PortAudio, e.g. apt-get install libportaudio2)") from exc
    return sounddevice


def parse_device(spec: str | None) -> int | str | None:
    """``--device`` value: an index ("3"), a name substring ("USB"), or None (default)."""
    if spec is None or spec == "":
        return None
    return int(spec) if spec.strip().isdigit() else spec


def pick_input_settings(device: int | str | None, preferred_rate: int = PREFERRED_RATE) -> tuple[int, int, str]:
    """Return ``(sample_rate, channels, device_name)`` the device accepts for int16 capture.

    Tries ``preferred_rate`` first, then the device's default rate; mono when possible,
    else stereo (the server downmixes).
    """
    sd = _sounddevice()
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise MicError(f"no input device {device!r}: {exc}") from exc
    max_channels = int(info["max_input_channels"])
    channel_options = [c for c in (1, 2) if c <= max_channels]
    rate_options = [preferred_rate, int(round(info["default_samplerate"])), 48000, 44100]
    rate_options = [rate for rate in dict.fromkeys(rate_options) if MIN_RATE <= rate <= MAX_RATE]
    for rate in rate_options:
        for channels in channel_options:
            try:
                sd.check_input_settings(device=device, samplerate=rate, channels=channels, dtype="int16")
            except (ValueError, sd.PortAudioError):
                continue
            return rate, channels, str(info["name"])
    raise MicError(f"device {info['name']!r} accepts none of the rates {rate_options} with 1-2 channels")


def list_devices() -> str:
    """The input devices, one per line, the default marked with ``*``."""
    sd = _sounddevice()
    default_input = sd.default.device[0]
    lines = []
    for index, info in enumerate(sd.query_devices()):
        if info["max_input_channels"] <= 0:
            continue
        mark = "*" if index == default_input else " "
        lines.append(
            f"{mark} {index:3d}  {info['name']}  ({info['max_input_channels']} ch, "
            f"default {info['default_samplerate']:.0f} Hz)"
        )
    return "\n".join(lines) if lines else "no input devices found"


def _default_stream_factory(**kwargs: Any) -> InputStream:
    return _sounddevice().RawInputStream(**kwargs)


#: Seconds of sent audio kept to send again after a drained server's ``end`` (from its
#: ``position``: what it had not processed yet).
RESEND_SECONDS = 60.0


class _Captured:
    """The audio captured so far, as blocks numbered by their first sample, kept for
    ``keep`` samples: a connection sends from any sample still kept, and a new one after a
    drain sends again what the server had not processed."""

    def __init__(self, frame_bytes: int, keep: int) -> None:
        self.frame_bytes, self.keep = frame_bytes, keep
        self.blocks: collections.deque[tuple[int, bytes]] = collections.deque()
        self.total = 0  # samples captured
        self.arrived = asyncio.Event()

    def add(self, data: bytes) -> None:
        self.blocks.append((self.total, data))
        self.total += len(data) // self.frame_bytes
        while self.blocks and self.blocks[0][0] < self.total - self.keep - len(data):
            self.blocks.popleft()
        self.arrived.set()

    def since(self, sample: int) -> list[bytes]:
        """The audio from ``sample`` on, as far as it is kept."""
        out = []
        for start, data in self.blocks:
            count = len(data) // self.frame_bytes
            if start + count <= sample:
                continue
            out.append(data[max(0, sample - start) * self.frame_bytes:])
        return out

    @property
    def oldest(self) -> int:
        return self.blocks[0][0] if self.blocks else self.total


async def stream_microphone(
    url: str,
    sample_rate: int,
    channels: int = 1,
    device: int | str | None = None,
    token: str | None = None,
    config: Mapping[str, Any] | None = None,
    on_event: EventCallback | None = None,
    stop_event: asyncio.Event | None = None,
    stream_factory: StreamFactory | None = None,
    block_seconds: float = BLOCK_SECONDS,
    stats: dict[str, int] | None = None,
    reconnect: bool = True,
) -> list[dict[str, Any]]:
    """Capture int16 audio and stream it until ``stop_event`` is set; return all events.

    Capture starts once the server is ``ready`` (the stream's time 0). ``stream_factory``
    builds the capture stream with ``sounddevice.RawInputStream``'s keyword arguments
    (tests pass a fake). Blocks captured before the stop are all sent before ``stop``.
    ``stats``, when given, receives the counts ``blocks`` and ``overflows`` (blocks the
    audio driver flagged, e.g. input overflow: some audio was lost before capture).

    When the server is drained (``end`` with ``reconnect``), capture goes on and, with
    ``reconnect``, the stream is opened again at ``url`` with its ``resume_id``: the
    audio from the ``position`` the server had processed is sent again, then the live
    audio, so nothing captured is lost (up to :data:`RESEND_SECONDS` behind). The events
    of every connection are returned, one ``end`` each.
    """
    stop_event = stop_event if stop_event is not None else asyncio.Event()
    factory = stream_factory or _default_stream_factory
    loop = asyncio.get_running_loop()
    captured = _Captured(2 * channels, int(RESEND_SECONDS * sample_rate))
    counts = stats if stats is not None else {}
    counts.update(blocks=0, overflows=0)
    microphone: list[InputStream] = []

    def take(data: bytes, flagged: bool) -> None:  # on the event loop: no lock needed
        counts["blocks"] += 1
        counts["overflows"] += int(flagged)
        captured.add(data)

    def callback(indata: Any, frames: int, time: Any, status: Any) -> None:  # audio thread
        loop.call_soon_threadsafe(take, bytes(indata), bool(status))

    def open_microphone() -> None:
        try:
            stream = factory(
                samplerate=sample_rate,
                channels=channels,
                dtype="int16",
                blocksize=max(1, int(sample_rate * block_seconds)),
                device=device,
                callback=callback,
            )
        except Exception as exc:  # PortAudio reports device trouble with its own error types
            raise MicError(f"cannot open the microphone: {exc}") from exc
        try:
            stream.start()
        except Exception as exc:
            stream.close()
            raise MicError(f"cannot start the microphone: {exc}") from exc
        microphone.append(stream)

    async def send(ws: ClientConnection, sample: int) -> None:
        if not microphone:
            open_microphone()
        while True:
            captured.arrived.clear()
            for data in captured.since(sample):
                await ws.send(data)
                sample += len(data) // captured.frame_bytes
            if stop_event.is_set():
                break
            waiter = asyncio.create_task(captured.arrived.wait())
            stopper = asyncio.create_task(stop_event.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            if stop_event.is_set():
                close_microphone()  # what it captured until now is sent, then stop
                await asyncio.sleep(0)  # blocks handed over by the audio thread land first
        await ws.send(json.dumps({"type": "stop"}))

    def close_microphone() -> None:
        while microphone:
            stream = microphone.pop()
            stream.stop()
            stream.close()

    def start_for(**resume: Any) -> str:
        return start_message(sample_rate, "pcm_s16le", channels, config, **resume)

    def send_from(position: float) -> Any:
        sample = int(round(position * sample_rate))
        if sample < captured.oldest:
            counts["lost"] = counts.get("lost", 0) + captured.oldest - sample
            sample = captured.oldest
        return lambda ws: send(ws, sample)

    try:
        # The oldest audio kept moves on while capture goes on: a second to spare.
        return await stream_resuming(url, start_for, send_from, token, on_event, reconnect,
                                     stopped=stop_event.is_set,
                                     earliest=lambda: captured.oldest / sample_rate + 1.0)
    finally:
        close_microphone()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    parser.add_argument("--device", help="input device index or name substring (default: system default)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server websocket URL (default {DEFAULT_URL})")
    parser.add_argument("--token", default=default_token(), help="bearer token (default: env STREAMER_TOKEN)")
    parser.add_argument("--config", type=json_object, help='stream config overrides as JSON, e.g. \'{"latency": 2}\'')
    return parser


async def _run(
    args: argparse.Namespace,
    settings: tuple[int, int],
    device: int | str | None,
    printer: TurnPrinter,
    stats: dict[str, int],
) -> list[dict[str, Any]]:
    stop_event = asyncio.Event()
    install_stop_handler(stop_event, "stopping: waiting for the last turns (Ctrl-C again to quit)")
    sample_rate, channels = settings
    return await stream_microphone(
        args.url, sample_rate, channels, device, args.token, args.config, printer.event, stop_event, stats=stats
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_devices:
            print(list_devices())
            return 0
        device = parse_device(args.device)
        sample_rate, channels, name = pick_input_settings(device)
        printer, stats = TurnPrinter(), {}
        print(f"listening on {name!r} at {sample_rate} Hz, {channels} ch; Ctrl-C to stop", file=sys.stderr)
        events = asyncio.run(_run(args, (sample_rate, channels), device, printer, stats))
    except (MicError, StreamError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    printer.summary(events[-1])
    if stats.get("overflows"):
        print(f"warning: {stats['overflows']} input overflow(s): some audio was lost", file=sys.stderr)
    if stats.get("lost"):
        print(f"warning: {stats['lost'] / sample_rate:.1f} s of audio was not sent again after a "
              "server drain (older than the resend buffer)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
