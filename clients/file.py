"""Stream an audio file to a streamer server and print who speaks when.

    python clients/file.py meeting.wav                      # real-time speed
    python clients/file.py meeting.wav --speed 0 --rttm meeting.rttm --json events.json

Any format soundfile reads. The file is sent at its native sample rate (8-48 kHz; other
rates are resampled to 16 kHz) with 1 or 2 channels (more are downmixed to mono): 16-bit
and 8-bit PCM files as ``pcm_s16le``, everything else as ``pcm_f32le``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidHandshake

if __package__ in (None, ""):  # run as a script: python clients/file.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clients.common import (  # noqa: E402
    DEFAULT_URL,
    EventCallback,
    StreamError,
    TurnPrinter,
    default_token,
    final_turns,
    install_stop_handler,
    json_object,
    start_message,
    stream_resuming,
    write_rttm,
)

MIN_RATE, MAX_RATE, FALLBACK_RATE = 8000, 48000, 16000
INT16_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8"}

@dataclass
class FileAudio:
    """Audio ready to send: ``frames`` is (samples, channels), int16 or float32.

    Attributes:
        frames: interleaved-ready samples, one row per sample instant.
        sample_rate: samples per second per channel.
        encoding: ``pcm_s16le`` for int16 frames, ``pcm_f32le`` for float32 frames.
    """

    frames: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.frames.shape[1])

    @property
    def encoding(self) -> str:
        return "pcm_s16le" if self.frames.dtype == np.int16 else "pcm_f32le"

    @property
    def duration(self) -> float:
        return len(self.frames) / self.sample_rate

    def chunks(self, seconds: float, start: float = 0.0) -> Iterator[bytes]:
        """Little-endian binary frames of ``seconds`` of audio each (the last may be
        shorter), from ``start`` seconds into the audio."""
        step = max(1, int(round(seconds * self.sample_rate)))
        dtype = "<i2" if self.frames.dtype == np.int16 else "<f4"
        for offset in range(int(round(start * self.sample_rate)), len(self.frames), step):
            yield self.frames[offset : offset + step].astype(dtype, copy=False).tobytes()


def read_audio(path: str | Path) -> FileAudio:
    """Read an audio file for streaming (see the module docstring for the rules)."""
    info = sf.info(str(path))
    as_int16 = info.subtype in INT16_SUBTYPES and info.channels <= 2
    frames, rate = sf.read(str(path), dtype="int16" if as_int16 else "float32", always_2d=True)
    if frames.shape[1] > 2:
        frames = frames.mean(axis=1, keepdims=True, dtype=np.float32)
    if not MIN_RATE <= rate <= MAX_RATE:
        import soxr

        frames = soxr.resample(frames.astype(np.float32), rate, FALLBACK_RATE).astype(np.float32)
        frames = frames.reshape(len(frames), -1)
        rate = FALLBACK_RATE
    return FileAudio(np.ascontiguousarray(frames), int(rate))


async def _send_audio(
    ws: ClientConnection,
    audio: FileAudio,
    speed: float,
    chunk_seconds: float,
    stop_event: asyncio.Event | None,
    start: float = 0.0,
) -> None:
    """Send the audio from ``start`` seconds, paced at ``speed`` x real time (0: as fast as
    possible), then ``stop``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0.0
    for chunk in audio.chunks(chunk_seconds, start):
        if stop_event is not None and stop_event.is_set():
            break
        if speed > 0:
            delay = started + sent / speed - loop.time()
            if delay > 0:
                if stop_event is None:
                    await asyncio.sleep(delay)
                else:
                    try:
                        await asyncio.wait_for(stop_event.wait(), delay)
                        break
                    except asyncio.TimeoutError:
                        pass
        await ws.send(chunk)
        sent += len(chunk) / (audio.channels * audio.frames.itemsize * audio.sample_rate)
    await ws.send(json.dumps({"type": "stop"}))


async def stream_audio(
    url: str,
    audio: FileAudio,
    speed: float = 1.0,
    token: str | None = None,
    config: Mapping[str, Any] | None = None,
    chunk_seconds: float = 0.1,
    on_event: EventCallback | None = None,
    stop_event: asyncio.Event | None = None,
    reconnect: bool = True,
) -> list[dict[str, Any]]:
    """Stream ``audio`` to the server at ``url``; return every event received, ``end`` last.

    ``on_event`` is called with each event as it arrives. Setting ``stop_event`` ends the
    stream early (``stop`` is sent and the server's ``end`` still awaited). Raises
    :class:`StreamError` on an ``error`` event or when the server closes without ``end``.

    A server that is drained (restarted, scaled down) ends the stream with ``reconnect``:
    with ``reconnect`` set, the stream is opened again at ``url`` (through a load balancer,
    on another replica) with the ``resume_id`` of the first, and the audio is sent on from
    the ``position`` the server had processed, so labels, identities and times continue and
    nothing is lost. The events of every connection are returned, one ``end`` each.
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    if chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")

    def start_for(**resume: Any) -> str:
        return start_message(audio.sample_rate, audio.encoding, audio.channels, config, **resume)

    def send_from(position: float) -> Any:
        async def send(ws: ClientConnection) -> None:
            await _send_audio(ws, audio, speed, chunk_seconds, stop_event, position)
        return send

    return await stream_resuming(
        url, start_for, send_from, token, on_event, reconnect,
        stopped=lambda: stop_event is not None and stop_event.is_set())


async def stream_file(
    url: str,
    path: str | Path,
    speed: float = 1.0,
    token: str | None = None,
    config: Mapping[str, Any] | None = None,
    chunk_seconds: float = 0.1,
    on_event: EventCallback | None = None,
    stop_event: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """Read the audio file at ``path`` and stream it (see :func:`stream_audio`)."""
    audio = read_audio(path)
    return await stream_audio(url, audio, speed, token, config, chunk_seconds, on_event, stop_event)


def write_events_json(path: str | Path, events: list[dict[str, Any]]) -> None:
    """Write all events as a JSON array, one event per line."""
    body = ",\n".join(json.dumps(event) for event in events)
    Path(path).write_text(f"[\n{body}\n]\n" if events else "[]\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="audio file (any format soundfile reads)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server websocket URL (default {DEFAULT_URL})")
    parser.add_argument("--token", default=default_token(), help="bearer token (default: env STREAMER_TOKEN)")
    parser.add_argument("--speed", type=float, default=1.0, help="x real time; 0 = as fast as possible (default 1)")
    parser.add_argument("--rttm", type=Path, help="write the final turns as RTTM (file id = file stem)")
    parser.add_argument("--json", type=Path, help="write every event received as JSON")
    parser.add_argument("--config", type=json_object, help='stream config overrides as JSON, e.g. \'{"latency": 2}\'')
    parser.add_argument("--chunk-ms", type=float, default=100.0, help="audio per binary frame (default 100 ms)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


async def _run(args: argparse.Namespace, printer: TurnPrinter) -> list[dict[str, Any]]:
    stop_event = asyncio.Event()
    install_stop_handler(stop_event, "stopping: waiting for the last turns (Ctrl-C again to quit)")
    return await stream_file(
        args.url,
        args.path,
        speed=args.speed,
        token=args.token,
        config=args.config,
        chunk_seconds=args.chunk_ms / 1000.0,
        on_event=None if args.quiet else printer.event,
        stop_event=stop_event,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        printer = TurnPrinter()
        events = asyncio.run(_run(args, printer))
    except StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, InvalidHandshake, asyncio.TimeoutError, sf.LibsndfileError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
    if not args.quiet:
        printer.summary(events[-1])
    if args.rttm:
        write_rttm(args.rttm, final_turns(events), args.path.stem)
    if args.json:
        write_events_json(args.json, events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
