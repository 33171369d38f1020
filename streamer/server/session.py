"""One websocket stream: receive -> decode -> engine (in the scheduler) -> send.

:class:`StreamSession` runs one connection: what the client's messages mean (their
order, the audio limits, the decoder, the unprocessed audio, when to pause reading) is
decided by the sans-I/O :class:`~streamer.server.inbound.Inbound`, how the stream ends
(the steps, their order, the close code) by :func:`~streamer.server.ending.ending`, and
the session acts on their answers. Three tasks cooperate on the event loop:

* the reader takes messages from the socket, decodes audio and queues it; when too much
  audio waits it stops reading, so websockets' flow control pushes back on the client;
* the processor hands the queued audio to the engine, one call at a time, through the
  server's scheduler (which batches the model calls of all streams due in a tick), and
  queues the turn events; what to feed and when, what to send for what the engine
  decided, when reading may go on and when the state is due to be saved are the sans-I/O
  :class:`~streamer.server.outbound.Outbound`'s answers;
* the :class:`EventSender` writes queued events to the socket, so a client that does not
  read only ever blocks itself, and is disconnected after ``send_timeout``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any, Awaitable, Callable

import numpy as np
from websockets.exceptions import ConnectionClosed

from streamer.audio import SAMPLE_RATE
from streamer.errors import ConfigError, StreamerError
from streamer.models.calls import Steps
from streamer.server import protocol
from streamer.server.ending import ending
from streamer.server.inbound import Audio, Context, Inbound, Snapshot, Start, Stop
from streamer.server.outbound import Done, Outbound, Wait
from streamer.server.connection import StreamConnection
from streamer.server.context import ServerContext
from streamer.server.protocol import IdleTimeout, SlowClient
from streamer.server.sender import EventSender
from streamer.server.state import BadState, decode_context, encode_context
from streamer.server.store import CONTEXT_TTL, StoreUnavailable

logger = logging.getLogger(__name__)
#: Seconds a stream whose connection was lost has to process, decide and save the rest.
LOSS_SAVE_TIMEOUT = 30.0
#: Seconds a resume by id waits for the final save of the stream it continues, polling.
LOSS_WAIT, LOSS_POLL = 2.0, 0.1


class _Ended(Exception):
    """The reader stopped because the client sent ``stop``."""


class StreamSession:
    """The state and tasks of one connection to ``/v1/stream``."""

    def __init__(self, connection: StreamConnection, context: ServerContext) -> None:
        self.connection = connection
        self.context = context
        self.settings = context.settings
        self.id = uuid.uuid4().hex[:12]
        self.sender = EventSender(connection, queue_size=self.settings.send_queue_size,
                                  timeout=self.settings.send_timeout)
        self.engine: Any = None
        self.inbound = Inbound(self.settings.max_pending_seconds,
                               self.settings.max_stream_seconds)
        #: The stream's received, unprocessed audio (the inbound side's queue).
        self.audio = self.inbound.audio
        self.outbound = Outbound(self.audio, self.settings.max_feed_seconds,
                                 self.settings.state_save_interval)
        # While processing is behind real time, the keep-alive waits for pongs that sit
        # unread behind the audio (see StreamConnection.busy).
        connection.busy = lambda: self.audio.behind(time.monotonic()) > 0
        self._audio_ready = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()
        self._reader: asyncio.Task | None = None
        self._processor: asyncio.Task | None = None
        self._failure: BaseException | None = None
        self._shutdown = False
        #: Where the stream's state is saved, so that a client can resume by this id.
        self.resume_id = secrets.token_hex(16)
        self._saver: asyncio.Task | None = None
        self._unsaved: dict[str, Any] | None = None
        #: Once the connection is lost: the events that could not be sent, in order.
        self._lost: list[dict[str, Any]] | None = None
        #: The session whose saved state this one continues (a resume by id).
        self._continues: str | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises for client behaviour."""
        opened = time.monotonic()
        peer = self.connection.remote_address
        logger.info("session %s opened from %s", self.id, peer[0] if peer else "?")
        self.context.metrics.connection_opened()
        outcome = "?"
        try:
            outcome = await self._serve()
        finally:
            for task in (self._reader, self._processor):
                if task is not None and not task.done():
                    task.cancel()
            await self.sender.abort()
            self.context.metrics.connection_closed(self.id)
            logger.info("session %s closed: %s, %.1f s of audio in %.1f s", self.id, outcome,
                        self.audio.received / SAMPLE_RATE, time.monotonic() - opened)

    def shutdown(self) -> None:
        """Server shutdown: stop reading, finish the stream (final turns and ``end``)."""
        self._shutdown = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _serve(self) -> str:
        self._reader = asyncio.create_task(self._read())
        try:
            await asyncio.wait([self._reader])
        except asyncio.CancelledError:
            self._reader.cancel()
            raise
        if self._reader.cancelled():
            error = self._failure
            if error is None:
                return await self._finish(None, going_away=True) if self._shutdown else "cancelled"
        else:
            error = self._reader.exception()
        if isinstance(error, _Ended):
            return await self._finish(None)
        if isinstance(error, ConnectionClosed):
            return await self._after_loss(self._disconnected("client disconnected"))
        if isinstance(error, StreamerError):
            return await self._finish(error)
        logger.error("session %s failed", self.id, exc_info=error)
        return await self._finish(StreamerError(f"internal error: {type(error).__name__}"),
                                  drain=False)

    async def _after_loss(self, outcome: str) -> str:
        """The connection was lost mid-stream (no ``stop``): process what the client sent,
        decide the rest, and save the state, its audio context and the final turns that
        could not be sent under ``resume_id``, as a drain does: the client that resumes
        by id goes on from the last sample the server got, and gets those turns again."""
        processor = self._processor
        if self.engine is None or processor is None or (
                processor.done() and (processor.cancelled() or processor.exception())):
            return outcome
        await self.sender.abort()
        self._lost = self.sender.unwritten() + (self._lost or [])
        try:
            async with asyncio.timeout(LOSS_SAVE_TIMEOUT):
                await self._drain()
                saved = await self.context.store.get_state(self.resume_id)
                if saved is not None and saved.get("session", self.id) not in (
                        self.id, self._continues):
                    return f"{outcome}; resumed elsewhere already"
                end = self._end_message()
                await self._save_context(end["position"])
                await self._save(end, wait=True, unsent=[
                    event for event in self._lost
                    if event.get("type") == "turn" and event.get("final")])
        except Exception as failure:  # noqa: BLE001 - the client is gone: log, go on
            logger.warning("session %s: state not saved after the connection was lost: %r",
                           self.id, failure)
            return outcome
        self.context.metrics.count("streams_lost")
        return f"{outcome}; saved for resume at {end['position']:.1f} s"

    async def _finish(self, cause: StreamerError | None, going_away: bool = False,
                      drain: bool = True) -> str:
        """End the stream as :func:`~streamer.server.ending.ending` says: process every
        accepted sample (unless ``drain`` is false: the reader failed), send the last
        final turns, then ``end`` or the error, and close."""
        plan = ending(cause, started=drain and self.engine is not None,
                      going_away=going_away)
        try:
            if plan.drain:
                await self._drain()
            if plan.end:
                # Drained (going away): the client reconnects (through the load
                # balancer, to another replica) and resumes from the state saved
                # here; with the audio context, it goes on as if it was not cut.
                end = self._end_message(reconnect=plan.reconnect)
                if plan.reconnect:
                    await self._save_context(end["position"])
                await self._save(end, wait=True)
                await self.sender.send(end)
        except ConnectionClosed:
            return self._disconnected("client disconnected while finishing")
        except SlowClient as slow:
            plan = ending(slow, started=False)
        except Exception as failure:  # noqa: BLE001 - a bug must not take the process down
            logger.error("session %s failed while finishing", self.id, exc_info=failure)
            plan = ending(StreamerError(f"internal error: {type(failure).__name__}"),
                          started=False)
        if plan.error is not None:
            self.connection.stop_input(plan.error)
            self.context.metrics.error(plan.error.code)
            if plan.send_error:
                with contextlib.suppress(ConnectionClosed, SlowClient):
                    await self.sender.send(protocol.error_message(plan.error))
            else:  # the client stopped reading: what is queued for it is dropped
                self.context.metrics.count("slow_clients")
                await self.sender.abort()
        await self._close(plan.code, plan.reason)
        return plan.outcome

    def _disconnected(self, outcome: str) -> str:
        """The outcome of a closed connection: ``slow_client`` when the connection gave
        up on a client that did not read (see :class:`StreamConnection`)."""
        slow = self.connection.gave_up
        if slow is None:
            return outcome
        self.context.metrics.error(slow.code)
        self.context.metrics.count("slow_clients")
        return f"{slow.code} ({slow})"

    async def _close(self, code: int, reason: str) -> None:
        """Close after the queued events are written; messages the client still sends are
        read and dropped so that its close frame gets through."""
        timeout = self.settings.close_timeout
        await self.sender.flush(timeout)
        discard = asyncio.create_task(self._discard_incoming())
        try:
            async with asyncio.timeout(timeout):
                await self.connection.close(code, reason[:120])
        except TimeoutError:
            self.connection.transport.abort()
        finally:
            discard.cancel()

    async def _discard_incoming(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                with contextlib.suppress(StreamerError):  # a refused frame, as the others
                    await self.connection.recv()

    # -- reading -----------------------------------------------------------------------

    async def _receive(self) -> str | bytes:
        """The next message. Empty audio frames are skipped: they carry nothing, so they
        do not count as activity for the idle timeout."""
        idle = self.settings.idle_timeout
        deadline = asyncio.get_running_loop().time() + idle if idle else None
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    message = await self.connection.recv()
                    if message or isinstance(message, str) or not self.inbound.started:
                        return message
        except TimeoutError:
            raise IdleTimeout(f"no message for {idle:g} s") from None

    async def _read(self) -> None:
        try:
            await self._read_messages()
        except StreamerError as error:
            # Decided: stop reading the client's input before anything else runs, so
            # that what it sent after (a websocket protocol violation included, even one
            # already buffered) cannot change how the stream ends.
            self.connection.stop_input(error)
            raise

    async def _read_messages(self) -> None:
        while True:
            if not self._resume.is_set():
                await self._resume.wait()
            action = self.inbound.receive(await self._receive(), time.monotonic())
            if isinstance(action, Audio):
                await self._queued(action)
            elif isinstance(action, Context):
                # Primed before any audio after it is queued, so the engine never sees
                # the resume point's audio first.
                await self._prime_with(self.engine, action.samples)
                await self._queued(action.audio)
            elif isinstance(action, Start):
                await self._start(protocol.parse_start(
                    await self._registered_voiceprints(action.message)))
            elif isinstance(action, Snapshot):
                snapshot = self._state_message("snapshot")
                await self._save(snapshot, wait=True)
                await self.sender.send(snapshot)
            elif isinstance(action, Stop):
                raise _Ended()

    async def _start(self, request: protocol.StartRequest) -> None:
        self.inbound.begin(request)
        engine = await self.context.run(self.context.new_engine, request.config)
        self.context.check_cost(engine.config)
        self.inbound.context_limit = engine.context_limit
        sealed, offset, context = request.resume, request.offset, None
        cut = request.offset  # where the stream it continues was cut, if known
        if request.resume_id is not None:
            record = await self._final_record(request.resume_id)
            if record is None:
                raise BadState("no saved state for this resume_id: it expired, or was "
                               "saved by a server that does not share this one's store")
            sealed = record.get("state")
            offset = record.get("position", 0.0) if offset is None else offset
            cut = record.get("position")
            self.resume_id = request.resume_id  # the continued stream saves in its place
            self._continues = record.get("session")
            if not request.context:  # else the client sends its own
                context = await self.context.store.get_context(request.resume_id)
            if context is not None and context.get("position") != record.get("position"):
                context = None  # the context of an earlier cut, not of this state
        if sealed is not None:
            state = self.context.states.open(sealed)
            try:
                engine.restore(state)
            except ConfigError as error:
                raise BadState(str(error)) from None
        if context is not None:
            await self._prime(engine, context)
        # A stream cut at ``cut`` seconds has no more audio before it to send.
        before = request.context if not isinstance(cut, (int, float)) else \
            max(0.0, min(request.context, float(cut)))
        self.inbound.expect_context(before)
        self.engine = engine
        self.outbound.offset = offset or 0.0
        await self.sender.send(protocol.ready_message(
            self.id, request, self.context.describe(), engine.config.to_public_dict(),
            self.context.client_limits(), self.resume_id,
            resumed=None if sealed is None else [s.label for s in engine.speakers()],
            offset=self.outbound.offset, context=before if request.context else None))
        if request.resume_id is not None:
            # The final turns the stream it continues decided but could not send.
            for turn in record.get("unsent") or []:
                if isinstance(turn, dict) and turn.get("type") == "turn":
                    await self.sender.send({**turn, "replayed": True})
        self._processor = asyncio.create_task(self._process())
        self._processor.add_done_callback(self._processor_done)

    async def _queued(self, audio: Audio) -> None:
        """Audio was queued: count it, warn the client, pause reading, as told."""
        if audio.seconds:
            self.context.metrics.received(self.id, audio.seconds, self.audio.backlog)
            self._audio_ready.set()
        if audio.warning is not None:
            self.context.metrics.count("falling_behind")
            await self.sender.send(audio.warning)
        if audio.pause:
            self.context.metrics.count("backpressure_pauses")
            self._resume.clear()

    # -- processing --------------------------------------------------------------------

    async def _process(self) -> None:
        """Feed queued audio to the engine, one call at a time, as the outbound side
        says (a stream sent in small frames costs one call per step, not one per
        frame), and act on its answer to each feed."""
        while True:
            action = self.outbound.next(self.engine.samples_to_next_step)
            if isinstance(action, Done):
                return
            if isinstance(action, Wait):
                self._audio_ready.clear()
                await self._audio_ready.wait()
                continue
            samples = action.samples
            started = time.monotonic()
            events = await self._step(lambda: self.engine.feed_steps(samples))
            done = time.monotonic()
            fed = self.outbound.fed(len(samples), events, self.engine.position)
            if fed.resume:
                self._resume.set()
            self.context.metrics.fed(self.id, fed.seconds, fed.backlog, done - started,
                                     done - action.ready_at)
            self.context.admission.record(fed.seconds, self.audio.behind(done))
            await self._send(fed.messages)
            if fed.save:
                self._save_in_background()

    def _processor_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    async def _drain(self) -> None:
        """Process every queued sample and the decoder tail, then flush the engine."""
        self.outbound.input_done = True
        self._audio_ready.set()
        if self._processor is not None:
            await self._processor
        tail = self.inbound.tail()
        engine = self.engine

        def finish() -> Steps[list]:
            events = (yield from engine.feed_steps(tail)) if len(tail) else []
            return events + (yield from engine.flush_steps())

        await self._send(self.outbound.messages(await self._step(finish)))

    async def _send(self, messages: list[dict[str, Any]]) -> None:
        """Send ``messages``; once the connection is lost, keep them (see _after_loss)."""
        sent = 0
        for message in messages:
            if self._lost is not None:
                self._lost.append(message)
                continue
            try:
                await self.sender.send(message)
                sent += 1
            except ConnectionClosed:
                self._lost = [message]
        if sent:
            self.context.metrics.count("turns_sent", sent)

    async def _step(self, make: Callable[[], Steps[Any]]) -> Any:
        """Run engine work (``make()`` gives its steps) in the scheduler's next tick."""
        metrics = self.context.metrics
        metrics.feed_started(1)
        try:
            return await self.context.step(make)
        finally:
            metrics.feed_started(-1)

    # -- saved states ------------------------------------------------------------------

    async def _final_record(self, resume_id: str) -> dict[str, Any] | None:
        """The state saved under ``resume_id``; while it is a periodic save, for up to
        ``LOSS_WAIT`` seconds a newer, final one (the stream it continues may be saving
        after losing its connection, on this process or another)."""
        store = self.context.store
        record = await store.get_state(resume_id)
        deadline = time.monotonic() + LOSS_WAIT
        while record is not None and record.get("final") is False \
                and time.monotonic() < deadline:
            await asyncio.sleep(LOSS_POLL)
            record = await store.get_state(resume_id) or record
        return record

    async def _registered_voiceprints(self, start: dict[str, Any]) -> dict[str, Any]:
        """``start`` with each known speaker given by name only (``{"name": ...}``) given
        the voiceprint registered under that name (``POST /v1/voiceprints?name=``)."""
        config = start.get("config")
        speakers = config.get("known_speakers") if isinstance(config, Mapping) else None
        if not isinstance(speakers, list) or not any(
                isinstance(s, Mapping) and set(s) == {"name"} for s in speakers):
            return start
        resolved = []
        for entry in speakers:
            if isinstance(entry, Mapping) and set(entry) == {"name"} \
                    and isinstance(entry["name"], str):
                found = await self.context.store.get_voiceprint(entry["name"])
                if found is None:
                    raise ConfigError(f"no voiceprint is registered under the name "
                                      f"{protocol.excerpt(entry['name'])}")
                entry = {"name": entry["name"], "voiceprint": found}
            resolved.append(entry)
        return {**start, "config": {**config, "known_speakers": resolved}}

    async def _save_context(self, position: float) -> None:
        """Save the drained stream's audio context (for the few minutes its client takes to
        reconnect), so that the stream resumed by ``resume_id`` decides as this one would
        have; a store that does not answer only costs the resumed stream that context."""
        context = {**encode_context(self.engine.context(), SAMPLE_RATE), "position": position}
        await self._store("audio context", self.context.store.put_context(
            self.resume_id, context, min(CONTEXT_TTL, self.settings.state_ttl)))

    async def _prime(self, engine: Any, document: Any) -> None:
        """Give a stream resumed by id the audio context saved when its first part was
        drained (ignored when it does not fit this stream's settings)."""
        samples = decode_context(document, SAMPLE_RATE, engine.context_limit)
        if samples is None:
            logger.warning("session %s: the saved audio context does not fit; resuming "
                           "without it", self.id)
            return
        await self._prime_with(engine, samples)

    async def _prime_with(self, engine: Any, samples: np.ndarray) -> None:
        """Prime ``engine`` (restored from a state) with the audio before its resume point."""
        try:
            await self._step(lambda: engine.prime_steps(samples))
        except ConfigError as error:
            raise BadState(str(error)) from None

    def _save_in_background(self) -> None:
        """Save the state now, in the background (called between engine calls, so the
        state is consistent): the outbound side asks for it every
        ``state_save_interval`` seconds of audio, so that a client whose connection or
        replica is lost resumes from a recent point."""
        self._unsaved = self._state_message("snapshot")
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_latest())

    async def _save_latest(self) -> None:
        while self._unsaved is not None:
            record, self._unsaved = self._unsaved, None
            await self._save(record)

    async def _save(self, message: dict[str, Any], wait: bool = False,
                    unsent: list[dict[str, Any]] | None = None) -> None:
        """Save the state of ``message`` (an ``end`` or ``snapshot``) under
        ``resume_id``, with the final turns the client did not get (``unsent``, after a
        lost connection). A store that does not answer costs the stream nothing but that
        save: the client still gets the state itself."""
        if wait and self._saver is not None and not self._saver.done():
            self._unsaved = None  # superseded by this newer state
            with contextlib.suppress(Exception):
                await self._saver
        # "final": the stream will save nothing later (ended, drained or lost), so a
        # resume by id need not wait for a newer save.
        record = {"state": message["state"], "position": message["position"],
                  "final": message["type"] == "end", "unsent": unsent or [],
                  "session": self.id}
        if await self._store("state", self.context.store.put_state(
                self.resume_id, record, self.settings.state_ttl)):
            self.context.metrics.count("states_saved")

    async def _store(self, what: str, saving: Awaitable[None]) -> bool:
        """Await a save to the store; one that does not answer is counted and logged, not
        raised (the stream goes on). Returns whether it was saved."""
        try:
            await saving
        except StoreUnavailable as error:
            self.context.metrics.error(error.code)
            logger.warning("session %s: %s not saved: %s", self.id, what, error)
            return False
        return True

    def _end_message(self, reconnect: bool = False) -> dict[str, Any]:
        return protocol.end_message(
            self.id, self.engine.position, [s.to_dict() for s in self.engine.speakers()],
            self._state_message("end"), reconnect)

    def _state_message(self, kind: str) -> dict[str, Any]:
        """The speaker memory so far (audio processed up to ``position``), sealed."""
        return protocol.state_message(kind, self.context.states.seal(self.engine.state()),
                                      self.outbound.offset + self.engine.position, self.resume_id)


__all__ = ["StreamSession"]
