"""Shared pieces of the command-line clients: connecting, printing turns, writing RTTM.

Only ``websockets`` is needed here; the clients do not import the ``streamer`` package, so
they run on any machine that can reach a server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"

# One colour per speaker (ANSI SGR codes), cycled when a stream has more speakers.
SPEAKER_COLOURS = (31, 32, 34, 33, 35, 36, 91, 92, 94, 93, 95, 96)
RESET = "\x1b[0m"
CLEAR_LINE = "\r\x1b[K"


class StreamError(RuntimeError):
    """The server answered with an ``error`` event or closed the stream abnormally."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StreamLost(StreamError):
    """The connection was lost mid-stream (no close handshake): ``events`` are those
    received on it until then."""

    def __init__(self, message: str, events: list[dict[str, Any]]) -> None:
        super().__init__("lost", message)
        self.events = events


def default_token() -> str | None:
    """The bearer token from ``STREAMER_TOKEN``, or None when unset or empty."""
    return os.environ.get("STREAMER_TOKEN") or None


def json_object(text: str) -> dict[str, Any]:
    """argparse type of ``--config``: a JSON object (stream config overrides)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError('must be a JSON object, e.g. {"latency": 2}')
    return value


def auth_headers(token: str | None) -> dict[str, str]:
    """HTTP headers for the websocket handshake (``Authorization: Bearer ...`` when set)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def start_message(
    sample_rate: int,
    encoding: str = "pcm_s16le",
    channels: int = 1,
    config: Mapping[str, Any] | None = None,
    resume_id: str | None = None,
    resume: str | None = None,
    offset: float | None = None,
    context: float | None = None,
) -> str:
    """The JSON ``start`` message that opens a stream. It continues an earlier one with
    ``resume_id`` (the state the server saved under it; the clock continues from the saved
    position), or with ``resume``, the ``state`` of its ``end``, and ``offset``, its
    ``position``; ``context``: the audio sent first is that many seconds from before the
    resume point."""
    message: dict[str, Any] = {
        "type": "start",
        "sample_rate": int(sample_rate),
        "encoding": encoding,
        "channels": int(channels),
    }
    if config:
        message["config"] = dict(config)
    if resume_id:
        message["resume_id"] = resume_id
    if resume:
        message["resume"] = resume
    if offset is not None:
        message["offset"] = offset
    if context:
        message["context"] = context
    return json.dumps(message)


#: Connections tried when resuming a drained stream, RECONNECT_DELAY seconds apart (more
#: each time): the balancer may need a moment to route around the server that left.
RECONNECT_ATTEMPTS, RECONNECT_DELAY = 8, 0.25
#: Seconds of audio from before the resume point sent again as ``start.context`` when a
#: stream resumes with the state it holds: more than any preset's buffer, so that the
#: resumed stream decides as the uncut one would have.
RESUME_CONTEXT = 15.0


async def stream_resuming(
    url: str,
    start_for: Callable[..., str],
    send_from: Callable[[float], AudioSender],
    token: str | None = None,
    on_event: EventCallback | None = None,
    reconnect: bool = True,
    stopped: Callable[[], bool] = lambda: False,
    earliest: Callable[[], float] = lambda: 0.0,
) -> list[dict[str, Any]]:
    """A stream (see :func:`run_stream`) that, with ``reconnect`` and while not
    ``stopped()``, survives its server's drain (it ends with ``reconnect``:
    :func:`resume_stream`) and a lost connection (:func:`resume_lost`): it is opened again
    and ``send_from(position)`` sends the audio from ``position`` (seconds of the stream)
    on; ``earliest()`` is the first position it can still send. ``start_for(**fields)``
    builds the ``start`` message (see :func:`start_message`). Returns the events of every
    connection, one ``ready`` each."""
    events: list[dict[str, Any]] = []
    opening = run_stream(url, start_for(), send_from(0.0), token=token, on_event=on_event)
    while True:
        try:
            events += await opening
        except StreamLost as lost:
            events += lost.events
            resume_id = next((e.get("resume_id") for e in reversed(lost.events)
                              if e.get("type") == "ready"), None)
            if not reconnect or stopped() or resume_id is None:
                raise
            opening = resume_lost(url, start_for, resume_id, send_from, token, on_event)
            continue
        end = events[-1]
        if not (reconnect and end.get("reconnect") and end.get("resume_id") and not stopped()):
            return events
        opening = resume_stream(url, start_for, end, send_from, token, on_event, earliest)


async def resume_lost(
    url: str,
    start_for: Callable[..., str],
    resume_id: str,
    send_from: Callable[[float], AudioSender],
    token: str | None = None,
    on_event: EventCallback | None = None,
) -> list[dict[str, Any]]:
    """Reopen a stream whose connection was lost, by its ``resume_id``: the server saved
    its state and the final turns it could not send (sent again, with ``replayed``) when
    it noticed the loss. The audio is sent again from the position its ``ready`` gives
    (``offset``), after the :data:`RESUME_CONTEXT` seconds before it (``start.context``;
    ``ready.context`` says how many the server expects), so that the resumed stream
    decides as the lost one would have even when the server could only keep a periodic
    save (it stopped without noticing the loss)."""
    ready: dict[str, Any] = {}

    def seen(event: dict[str, Any]) -> None:
        if event.get("type") == "ready":
            ready.clear()
            ready.update(event)
        if on_event is not None:
            on_event(event)

    async def send(ws: ClientConnection) -> None:
        start = float(ready.get("offset", 0.0)) - float(ready.get("context", 0.0))
        await send_from(round(max(0.0, start), 3))(ws)

    return await _retrying(url, start_for(resume_id=resume_id, context=RESUME_CONTEXT), send,
                           token, seen)


async def resume_stream(
    url: str,
    start_for: Callable[..., str],
    end: Mapping[str, Any],
    send_from: Callable[[float], AudioSender],
    token: str | None = None,
    on_event: EventCallback | None = None,
    earliest: Callable[[], float] = lambda: 0.0,
) -> list[dict[str, Any]]:
    """Reopen a stream that ended with ``reconnect`` (its server was drained): by its
    ``resume_id`` (the state the servers share, with the audio context the drained
    server saved), sending the audio from the ``position`` of its ``end`` on; else, when
    no server has it (no shared store, or it is down), with the ``state`` and ``position``
    of its ``end``, sending the :data:`RESUME_CONTEXT` seconds before that position first
    (as many as it still holds since ``earliest()``) as ``start.context``.
    ``start_for(**fields)`` builds the ``start`` message (see :func:`start_message`) and
    ``send_from(position)`` the sender of the audio from a position on. Connections
    refused or failing are tried again for a few seconds."""
    position = float(end["position"])
    try:
        return await _retrying(url, start_for(resume_id=end["resume_id"]), send_from(position),
                               token, on_event)
    except StreamError as error:
        if error.code not in ("bad_state", "store_unavailable") or not end.get("state"):
            raise
    # Whole milliseconds, so that the context ends on the resume point at any rate.
    context = max(0.0, math.floor(min(RESUME_CONTEXT, position - earliest()) * 1000) / 1000)
    return await _retrying(
        url, start_for(resume=end["state"], offset=position, context=context),
        send_from(round(position - context, 3)), token, on_event)


async def _retrying(url: str, start: str, send_audio: AudioSender, token: str | None,
                    on_event: EventCallback | None) -> list[dict[str, Any]]:
    for attempt in range(RECONNECT_ATTEMPTS):
        try:
            return await run_stream(url, start, send_audio, token=token, on_event=on_event)
        except (OSError, StreamError) as error:
            retry = isinstance(error, OSError) or error.code in ("unavailable",
                                                                "too_many_connections")
            if not retry or attempt == RECONNECT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(RECONNECT_DELAY * (attempt + 1))
    raise AssertionError("unreachable")


def raise_for_error(event: Mapping[str, Any]) -> None:
    """Raise :class:`StreamError` when ``event`` is an ``error`` event."""
    if event.get("type") == "error":
        raise StreamError(str(event.get("code", "error")), str(event.get("message", "")))


def final_turns(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The final turns among ``events``, one per turn id, sorted by start time. Turn ids
    count from 0 on each connection (a resumed stream's ``ready`` starts a new count); a
    ``replayed`` turn is one of the connection before, sent again after it was lost."""
    by_id: dict[Any, dict[str, Any]] = {}
    connection = 0
    for index, event in enumerate(events):
        if event.get("type") == "ready":
            connection += 1
        elif event.get("type") == "turn" and event.get("final"):
            turn = {key: value for key, value in event.items() if key != "replayed"}
            by_id[connection - bool(event.get("replayed")), event.get("id", f"#{index}")] = turn
    return sorted(by_id.values(), key=lambda turn: (turn["start"], turn["end"]))


def rttm_lines(turns: Iterable[Mapping[str, Any]], file_id: str) -> list[str]:
    """RTTM ``SPEAKER`` lines (one per turn) for a file called ``file_id``."""
    file_id = "_".join(file_id.split()) or "stream"
    lines = []
    for turn in turns:
        start = float(turn["start"])
        duration = float(turn["end"]) - start
        if duration <= 0:
            continue
        lines.append(
            f"SPEAKER {file_id} 1 {start:.3f} {duration:.3f} <NA> <NA> {turn['speaker']} <NA> <NA>"
        )
    return lines


def write_rttm(path: str | os.PathLike[str], turns: Iterable[Mapping[str, Any]], file_id: str) -> None:
    """Write the turns as an RTTM file."""
    lines = rttm_lines(turns, file_id)
    with open(path, "w", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))


EventCallback = Callable[[dict[str, Any]], None]
AudioSender = Callable[[ClientConnection], Awaitable[None]]


async def run_stream(
    url: str,
    start: str,
    send_audio: AudioSender,
    token: str | None = None,
    on_event: EventCallback | None = None,
    open_timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """One stream: send ``start``, await ``ready``, then run ``send_audio(ws)`` (which sends
    the binary frames and finally ``stop``) while collecting events until ``end``.

    Returns every event received, ``ready`` first and ``end`` last; ``on_event`` sees each
    one as it arrives. Raises :class:`StreamError` on an ``error`` event or when the server
    closes without ``end``.
    """
    events: list[dict[str, Any]] = []

    def handle(message: str | bytes) -> dict[str, Any] | None:
        if isinstance(message, bytes):
            return None
        event = json.loads(message)
        events.append(event)
        if on_event is not None:
            on_event(event)
        raise_for_error(event)
        return event

    try:
        ws = await connect(url, additional_headers=auth_headers(token), open_timeout=open_timeout, max_size=None)
    except InvalidStatus as exc:  # refused at the handshake: 401, 403, 503 ...
        raise rejection_error(exc) from exc
    async with ws:
        try:
            await ws.send(start)
            ready = handle(await ws.recv())
        except ConnectionClosed as exc:
            raise StreamError("closed", f"server closed the stream before ready: {exc}") from exc
        if ready is None or ready.get("type") != "ready":
            raise StreamError("protocol_error", f"expected a ready event, got {ready!r}")

        async def receive() -> None:
            async for message in ws:
                event = handle(message)
                if event is not None and event.get("type") == "end":
                    return

        sender = asyncio.create_task(send_audio(ws))
        receiver = asyncio.create_task(receive())
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not sender.cancelled():
                failure = sender.exception()
                if failure is not None and not isinstance(failure, ConnectionClosed):
                    raise failure  # e.g. the audio source broke: no point waiting for the server
            try:
                await receiver
            except ConnectionClosed as exc:
                if exc.rcvd is not None:  # closed by the server, not lost
                    raise
                raise StreamLost(f"the connection was lost: {exc}", events) from exc
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        if not events or events[-1].get("type") != "end":
            raise StreamError(
                "closed", f"server closed the stream before end (code {ws.close_code}, {ws.close_reason!r})"
            )
    return events


def rejection_error(exc: InvalidStatus) -> StreamError:
    """A :class:`StreamError` for a handshake the server refused, with the code it gave."""
    status = exc.response.status_code
    body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
    try:
        detail = json.loads(body)
    except ValueError:
        detail = None
    if isinstance(detail, dict) and detail.get("code"):
        return StreamError(str(detail["code"]), str(detail.get("message", body)))
    codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 503: "unavailable"}
    return StreamError(codes.get(status, f"http_{status}"), f"HTTP {status}: {body or 'refused'}")


def install_stop_handler(stop_event: asyncio.Event, message: str | None = None) -> None:
    """Ctrl-C sets ``stop_event`` (the stream ends cleanly); a second Ctrl-C cancels the task."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_sigint() -> None:
        if stop_event.is_set():
            if task is not None:
                task.cancel()
            return
        stop_event.set()
        if message:
            print(message, file=sys.stderr, flush=True)

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
        pass


def later_turn(interim: Mapping[str, Any] | None, final: Mapping[str, Any]) -> bool:
    """Whether ``interim`` is a later turn than ``final`` (so a final event leaves it open).

    The server may send the interim view of the next turn before the final event that
    closes the previous one; that interim stays on screen.
    """
    if interim is None:
        return False
    interim_id, final_id = interim.get("id"), final.get("id")
    if isinstance(interim_id, int) and isinstance(final_id, int):
        return interim_id > final_id
    return False


class TurnPrinter:
    """Prints turn events as they arrive, one colour per speaker.

    On a terminal the interim (open) turn is redrawn in place on the last line and each
    final turn gets its own line; elsewhere (pipes, files) only final turns are printed.
    """

    def __init__(self, out: TextIO | None = None, colour: bool | None = None, live: bool | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        is_tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.colour = is_tty and not os.environ.get("NO_COLOR") if colour is None else colour
        self.live = is_tty if live is None else live
        self._speakers: dict[str, int] = {}
        self._interim_shown = False
        self._interim: Mapping[str, Any] | None = None

    def speaker_colour(self, label: str) -> int:
        """The ANSI colour code of a speaker (stable for the life of the printer)."""
        if label not in self._speakers:
            self._speakers[label] = len(self._speakers)
        return SPEAKER_COLOURS[self._speakers[label] % len(SPEAKER_COLOURS)]

    def paint(self, label: str, text: str) -> str:
        if not self.colour:
            return text
        return f"\x1b[{self.speaker_colour(label)}m{text}{RESET}"

    def format_turn(self, turn: Mapping[str, Any]) -> str:
        label = str(turn.get("speaker", "?"))
        start, end = float(turn.get("start", 0.0)), float(turn.get("end", 0.0))
        text = f"[{start:8.2f} - {end:8.2f}] {label}"
        return self.paint(label, text) + ("" if turn.get("final") else " …")

    def _clear_interim(self) -> None:
        if self._interim_shown:
            self.out.write(CLEAR_LINE)
            self._interim_shown = False

    def event(self, event: Mapping[str, Any]) -> None:
        """Print one server event (turns, warnings, errors; other types are ignored)."""
        kind = event.get("type")
        if kind == "turn":
            self._clear_interim()
            if event.get("final"):
                self.out.write(self.format_turn(event) + "\n")
                if not later_turn(self._interim, event):
                    self._interim = None
            else:
                self._interim = event
            if self.live and self._interim is not None:
                self.out.write(self.format_turn(self._interim))
                self._interim_shown = True
        elif kind == "end" and event.get("reconnect"):
            self._clear_interim()
            self.out.write(f"server drained at {float(event.get('position', 0)):.2f} s: "
                           "resuming on another server\n")
        elif kind in ("warning", "error"):
            self._clear_interim()
            self.out.write(f"{kind}: {event.get('code', '')} {event.get('message', '')}".rstrip() + "\n")
        else:
            return
        self.out.flush()

    def summary(self, end: Mapping[str, Any]) -> None:
        """Print the ``end`` event: stream duration and speech per speaker."""
        self._clear_interim()
        self._interim = None
        speakers = list(end.get("speakers") or [])
        duration = float(end.get("duration") or 0.0)
        self.out.write(f"end: {duration:.2f} s of audio, {len(speakers)} speaker(s)\n")
        for speaker in speakers:
            label = str(speaker.get("label", "?"))
            speech = float(speaker.get("speech") or 0.0)
            self.out.write(f"  {self.paint(label, label)}  {speech:8.2f} s of speech\n")
        self.out.flush()
