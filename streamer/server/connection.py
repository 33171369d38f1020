"""The websocket connection of one stream: websockets' ``ServerConnection`` with the
framing layer's limits moved into the message stream, and a bound on what a peer that
does not read can make the server queue.

websockets enforces its frame size limit and its UTF-8 check by failing the connection
at once (close 1009 or 1007): the client would then get neither the final turns of the
audio it already sent nor an ``error`` event. Here :class:`StreamProtocol` (sans-I/O,
frame by frame as they are parsed) makes these checks and ends the incoming stream with a
:class:`Refusal` in the place of the bad message; :meth:`StreamConnection.recv` raises it,
as a :class:`~streamer.errors.StreamerError`, after every message received before it, so
that the session handles it like any other bad message. A frame above the limit is
skipped as it arrives, never buffered.

A peer that sends but does not read (a ping flood answered by pongs, events nobody
reads) fills the socket's write buffer. Past its high-water mark (``write_limit``) the
connection stops reading from that peer, so nothing more is queued for it; if the buffer
does not drain within ``stall_timeout`` the connection is closed (1008) and aborted.

While the server cannot keep a stream real time, it stops reading it (backpressure), and
the peer's pong to a keep-alive ping waits unread with the rest. The keep-alive therefore
does not count its timeout while reading is paused *and* the application says it is
behind real time (:attr:`StreamConnection.busy`): a stream is never ended because the
server is busy, and a peer that is gone is still found once reading resumes. A peer that
sends faster than real time and never reads (so never answers pings) gets no such grace.
"""
from __future__ import annotations

import asyncio
import codecs
import collections
import dataclasses
from typing import Any, Callable, Generator

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.frames import (BINARY, CONT, DATA_OPCODES, TEXT, Close, CloseCode, Frame,
                               Opcode)
from websockets.protocol import CLOSED, OPEN
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Data, LoggerLike

from streamer.errors import StreamerError
from streamer.server.protocol import BadJson, FrameTooLarge, SlowClient

#: Most frames one message may be split into (websockets itself allows 4096).
MAX_FRAGMENTS = 1024
#: How often (seconds) the keep-alive looks whether reading is paused.
KEEPALIVE_POLL = 0.1
#: Payloads this small are always read: frame headers and control frames (RFC 6455 caps
#: them at 125 bytes) go through the same reader.
_ALWAYS_READ = 125


class _SkippingReader(StreamReader):
    """A stream reader that skips, instead of buffering, payloads above ``limit``; and
    that reads the body of an HTTP request (``POST /v1/voiceprints``).

    websockets' request parser refuses any request with a body. While the request's
    head is read, this reader hides ``Content-Length`` and ``Transfer-Encoding`` from it
    (renamed ``X-Streamer-*``) and, after the blank line that ends the head, reads a body
    of at most ``body_limit`` bytes into :attr:`body`, when ``accepts_body(method, target,
    authorization)`` says the request may carry one (the upload route, with the right
    token: nobody else makes the server hold a body). Another body is not read: the route
    answers (413, 401, 400...) from the head, and the connection closes.
    """

    def __init__(self, limit: int, body_limit: int = 0,
                 accepts_body: Callable[[str, str, str], bool] | None = None) -> None:
        super().__init__()
        self.limit = max(limit, _ALWAYS_READ)
        #: Size of the payload being skipped (0 when none).
        self.skipping = 0
        #: Size of the last payload skipped, until the protocol takes it.
        self.skipped = 0
        self.body_limit = body_limit
        #: The request body's declared length (None: no Content-Length, or not a number).
        self.body_length: int | None = None
        #: The request body, when one was declared and is within ``body_limit``.
        self.body = b""
        #: Whether the request declared a Transfer-Encoding (not supported: answered 411).
        self.chunked = False
        #: Set after the head of a request with a body: nothing after it is parsed as
        #: websocket frames (the route answers and the connection closes).
        self.held = False
        self._in_head = True
        self._accepts_body = accepts_body or (lambda method, target, authorization: True)
        self._request_line = b""
        self._authorization = b""

    def read_line(self, m: int, too_long_exc_type: type[Exception] = RuntimeError
                  ) -> Generator[None, None, bytearray]:
        while self.held:
            yield
        line = yield from super().read_line(m, too_long_exc_type)
        if not self._in_head:
            return line
        if not self._request_line:
            self._request_line = bytes(line)
            return line
        name, colon, value = line.partition(b":")
        header = name.strip().lower()
        if colon and header == b"authorization":
            self._authorization = value.strip()
        if colon and header in (b"content-length", b"transfer-encoding"):
            self.chunked = self.chunked or header == b"transfer-encoding"
            if header == b"content-length":
                length = value.strip()
                declared = int(length) if length.isdigit() and len(length) < 19 else -1
                # Several different lengths make the body ambiguous: refused as malformed.
                if self.body_length not in (None, declared):
                    declared = -1
                self.body_length = declared
            return bytearray(b"X-Streamer-" + line.lstrip())
        if line in (b"\r\n", b"\n"):
            self._in_head = False
            if self.body_length and 0 < self.body_length <= self.body_limit \
                    and self._body_accepted():
                self.body = bytes((yield from super().read_exact(self.body_length)))
            self.held = self.chunked or (self.body_length is not None and self.body_length != 0)
        return line

    def _body_accepted(self) -> bool:
        method, _, rest = self._request_line.decode("latin-1").partition(" ")
        target = rest.rsplit(" ", 1)[0]
        return self._accepts_body(method, target, self._authorization.decode("latin-1"))

    def read_exact(self, n: int) -> Generator[None, None, bytearray]:
        while self.held:
            yield
        if n <= self.limit:
            return (yield from super().read_exact(n))
        self.skipping = left = n
        while left:
            if not self.buffer:
                if self.eof:
                    raise EOFError(f"stream ends inside a frame of {n} bytes")
                yield
                continue
            taken = min(left, len(self.buffer))
            del self.buffer[:taken]
            left -= taken
        self.skipping, self.skipped = 0, n
        return bytearray()


@dataclasses.dataclass
class Refusal:
    """A protocol event: the message stream ends here with ``error``."""

    error: StreamerError


@dataclasses.dataclass
class Violation:
    """A protocol event: a violation of the websocket protocol, parsed while messages
    before it were not yet received by the application; the connection fails (``code``)
    when :meth:`StreamConnection.recv` reaches it, unless the application refuses one of
    those messages first."""

    code: int
    reason: str


class StreamProtocol(ServerProtocol):
    """websockets' server protocol with the stream's limits on incoming messages.

    Payloads above ``frame_limit`` are skipped, not buffered; a message above
    ``frame_limit`` bytes or :data:`MAX_FRAGMENTS` frames, or a text message that is not
    UTF-8, ends the incoming stream with a :class:`Refusal` event in the place of that
    message. Input after a refusal is not parsed any more (a violation of the websocket
    protocol behind it must not close the connection before the refusal is answered).
    """

    def __init__(self, frame_limit: int, logger: LoggerLike | None = None,
                 body_limit: int = 0,
                 accepts_body: Callable[[str, str, str], bool] | None = None) -> None:
        super().__init__(max_size=None, logger=logger)
        self.frame_limit = frame_limit
        self.refusal: StreamerError | None = None
        #: A violation held behind messages the application has not received yet.
        self.violation: Violation | None = None
        #: Complete data messages parsed so far.
        self.messages_parsed = 0
        #: How many of them the application received (set by the connection).
        self.messages_received: Callable[[], int] = lambda: self.messages_parsed
        self._parsing = False
        self._message_size = 0
        self._fragments = 0
        self._text: codecs.IncrementalDecoder | None = None
        # The parser started by __init__ holds on to the reader of that moment: start it
        # again on the skipping one, before any byte arrives.
        self.reader: _SkippingReader = _SkippingReader(frame_limit, body_limit, accepts_body)
        self.parser = self.parse()
        next(self.parser)

    def receive_data(self, data: bytes | bytearray) -> None:
        self._parsing = True
        try:
            super().receive_data(data)
        finally:
            self._parsing = False
        # An oversized frame is refused as soon as its header is in, not when its last
        # byte has been skipped.
        skipping = self.reader.skipping
        if skipping and self.refusal is None and self.state is OPEN:
            self._refuse(self._too_large(f"frame of {skipping} bytes"))

    def recv_frame(self, frame: Frame) -> None:
        refusal = self._check(frame)
        if refusal is not None:
            self._refuse(refusal)
            return
        super().recv_frame(frame)
        if frame.opcode in DATA_OPCODES and frame.fin:
            self.messages_parsed += 1

    def fail(self, code: CloseCode | int, reason: str = "") -> None:
        """A violation of the websocket protocol found while parsing fails the connection
        at once only when the application has received every message before it: else it
        takes its place in the message stream (a :class:`Violation`), so that a refusal
        of an earlier message keeps its own close code. Input after it is not parsed."""
        if (self._parsing and code == CloseCode.PROTOCOL_ERROR and self.state is OPEN
                and self.refusal is None and self.violation is None
                and self.messages_parsed > self.messages_received()):
            self.violation = Violation(code, reason)
            self.events.append(self.violation)
            self.parser = self._ignore_input()
            next(self.parser)
            return
        super().fail(code, reason)

    def stop_input(self, error: StreamerError) -> None:
        """The application refused a message: the peer's input is no longer parsed (nor
        a violation held behind it acted on), so nothing it sent can change how the
        connection closes."""
        if self.refusal is not None:
            return
        self.refusal = error
        self.violation = None
        self.parser = self._ignore_input()
        next(self.parser)

    def _check(self, frame: Frame) -> StreamerError | None:
        """Why ``frame`` ends the stream, if it does."""
        reader = self.reader
        if reader.skipped:
            size, reader.skipped = reader.skipped, 0
            return self._too_large(f"frame of {size} bytes")
        if frame.opcode not in DATA_OPCODES:
            return None
        if frame.opcode is not CONT:
            self._message_size = self._fragments = 0
            self._text = codecs.getincrementaldecoder("utf-8")() if frame.opcode is TEXT else None
        self._message_size += len(frame.data)
        self._fragments += 1
        if self._message_size > self.frame_limit:
            whole = frame.fin and self._fragments == 1
            return self._too_large(f"frame of {self._message_size} bytes" if whole else
                                   f"message of at least {self._message_size} bytes")
        if self._fragments > MAX_FRAGMENTS:
            return FrameTooLarge(f"a message may be split into at most {MAX_FRAGMENTS} frames")
        if self._text is not None:
            try:
                self._text.decode(frame.data, frame.fin)
            except UnicodeDecodeError as error:
                at = self._message_size - len(frame.data) + error.start
                return BadJson(f"text messages must be UTF-8 JSON; invalid UTF-8 at byte {at}")
        return None

    def _too_large(self, what: str) -> FrameTooLarge:
        return FrameTooLarge(f"{what} is above the limit of {self.frame_limit} bytes")

    def _refuse(self, error: StreamerError) -> None:
        self.refusal = error
        self.events.append(Refusal(error))
        self.parser = self._ignore_input()
        next(self.parser)

    def _ignore_input(self) -> Generator[None, None, None]:
        """Drop what the peer sends (its close frame too) until it closes TCP."""
        while not (yield from self.reader.at_eof()):
            self.reader.discard()
        self.state = CLOSED
        yield
        raise AssertionError("_ignore_input() shouldn't step after EOF")


class StreamConnection(ServerConnection):
    """A ``ServerConnection`` whose framing limits reach the application in order.

    Only :meth:`recv` (and iteration, which uses it) applies them; the session uses
    nothing else to receive.
    """

    protocol: StreamProtocol

    def __init__(self, protocol: ServerProtocol, server: Server, *, frame_limit: int,
                 stall_timeout: float, body_limit: int = 0,
                 accepts_body: Callable[[str, str, str], bool] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(StreamProtocol(frame_limit, logger=protocol.logger,
                                        body_limit=body_limit, accepts_body=accepts_body),
                         server, **kwargs)
        self.stall_timeout = stall_timeout
        #: Set when the peer stopped reading and the connection was closed for it.
        self.gave_up: SlowClient | None = None
        self._kinds: collections.deque[Opcode] = collections.deque()
        self._in_message = False
        self._messages_in = 0
        self._messages_out = 0
        self._refusal: StreamerError | None = None
        self._refused_after = 0
        self._violation_after: int | None = None
        self._reading_paused_by: set[str] = set()
        #: Whether the application is behind real time on this connection's input (set
        #: by the application; see the module's docstring).
        self.busy: Callable[[], bool] = lambda: False
        self._stall_timer: asyncio.TimerHandle | None = None

    @classmethod
    def factory(cls, *, frame_limit: int, stall_timeout: float, body_limit: int = 0,
                accepts_body: Callable[[str, str, str], bool] | None = None
                ) -> Callable[..., "StreamConnection"]:
        """A ``create_connection`` for websockets' ``serve``; ``accepts_body(method,
        target, authorization)``: whether a request's body is read (see
        :class:`_SkippingReader`)."""

        def create(protocol: ServerProtocol, server: Server, **kwargs: Any
                   ) -> StreamConnection:
            return cls(protocol, server, frame_limit=frame_limit,
                       stall_timeout=stall_timeout, body_limit=body_limit,
                       accepts_body=accepts_body, **kwargs)

        return create

    # -- receiving ---------------------------------------------------------------------

    async def recv(self, decode: bool | None = None) -> Data:
        """The next message; raises the refusal of a bad message in its place."""
        data = await super().recv(decode=False)
        self._messages_out += 1
        if self._refusal is not None and self._messages_out > self._refused_after:
            raise self._refusal
        violation = self.protocol.violation
        if (violation is not None and self._violation_after is not None
                and self._messages_out > self._violation_after):
            # The held violation is reached: fail the connection as websockets would have.
            await self.close(violation.code, violation.reason)
            raise ConnectionClosedError(None, Close(violation.code, violation.reason))
        kind = self._kinds.popleft()
        if decode or (decode is None and kind is TEXT):
            return data.decode()
        return data

    def process_event(self, event: Any) -> None:
        if isinstance(event, Refusal):
            self._deliver_refusal(event.error)
            return
        if isinstance(event, Violation):
            self._violation_after = self._messages_in
            self._wake_recv()
            return
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            if event.opcode is not CONT:
                self._kinds.append(event.opcode)
            self._in_message = not event.fin
            if event.fin:
                self._messages_in += 1
        super().process_event(event)

    def _deliver_refusal(self, error: StreamerError) -> None:
        """End the message stream with ``error``, after the messages received so far."""
        self._refusal = error
        self._refused_after = self._messages_in
        self._wake_recv()

    def stop_input(self, error: StreamerError) -> None:
        """The application refused a message (``error``): stop reading the peer's input
        now, before anything else runs, so that input already buffered or still to come
        (a violation of the websocket protocol included) cannot change the close code.
        :meth:`close` then sends the close frame and ends the TCP connection."""
        if self.protocol.state is OPEN:
            self.protocol.stop_input(error)

    def _wake_recv(self) -> None:
        # One last frame wakes a recv() that waits, and completes a message left half
        # received, so that recv() reaches the refusal (or violation) in order.
        try:
            self.recv_messages.put(Frame(CONT if self._in_message else BINARY, b"", True))
        except EOFError:
            pass

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close; after a refusal the peer's input is no longer read, so its close frame
        would never be seen: send ours and end the TCP connection at once, as when
        websockets fails a connection."""
        held = self.protocol.refusal is not None or self.protocol.violation is not None
        if self.protocol.state is not OPEN or not held:
            await super().close(code, reason)
            return
        try:
            async with self.send_context():
                self.protocol.fail(code, reason)
        except ConnectionClosed:
            pass

    # -- a peer that does not read -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.protocol.messages_received = lambda: self._messages_out
        # Reading pauses while websockets' receive queue is full or the write buffer is.
        self.recv_messages.pause = lambda: self._pause_reading("queue")
        self.recv_messages.resume = lambda: self._resume_reading("queue")

    def pause_writing(self) -> None:
        super().pause_writing()
        # No more reading, so no more pongs (or anything else) are queued for this peer.
        self._pause_reading("write")
        if self._stall_timer is None and self.stall_timeout:
            self._stall_timer = self.loop.call_later(self.stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._resume_reading("write")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        super().connection_lost(exc)

    async def keepalive(self) -> None:
        """websockets' keep-alive, with the pong's timeout counted only while this side
        reads (see the module's docstring); a ping is not sent while reading is paused."""
        assert self.ping_interval is not None
        latency = 0.0
        try:
            while True:
                await asyncio.sleep(self.ping_interval - latency)
                while self._behind():
                    await asyncio.sleep(KEEPALIVE_POLL)
                pong = await self.ping()
                if self.ping_timeout is None:
                    continue
                latency = await self._pong_within(pong, self.ping_timeout)
                if latency is None:
                    async with self.send_context():
                        self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - as websockets' own keep-alive
            self.logger.error("keepalive ping failed", exc_info=True)

    async def _pong_within(self, pong: "asyncio.Future[float]", timeout: float
                           ) -> float | None:
        """The pong's latency, or None when ``timeout`` seconds of reading passed first."""
        left = timeout
        while True:
            wait = min(left, KEEPALIVE_POLL)
            try:
                async with asyncio.timeout(wait):
                    return await asyncio.shield(pong)
            except TimeoutError:
                if not self._behind():
                    left -= wait
                if left <= 0:
                    return None

    def _behind(self) -> bool:
        """Reading is paused because the application, behind real time, has not taken
        what it received."""
        return "queue" in self._reading_paused_by and self.busy()

    def _pause_reading(self, reason: str) -> None:
        if not self._reading_paused_by:
            self.transport.pause_reading()
        self._reading_paused_by.add(reason)

    def _resume_reading(self, reason: str) -> None:
        self._reading_paused_by.discard(reason)
        if not self._reading_paused_by and not self.transport.is_closing():
            self.transport.resume_reading()

    def _stalled(self) -> None:
        """The peer left the write buffer full for ``stall_timeout``: close, abort soon.

        The close frame waits behind the unread data, so the transport is aborted after
        ``close_timeout`` whatever happens (websockets' own close would wait for the
        buffer to drain, and its keep-alive ping too)."""
        self._stall_timer = None
        self.gave_up = SlowClient(
            f"the client did not read for {self.stall_timeout:g} s "
            f"({self.transport.get_write_buffer_size()} bytes waiting to be sent)")
        if self.protocol.state is OPEN:
            self.protocol.fail(CloseCode.POLICY_VIOLATION, SlowClient.code)
            self.send_data()
        self.loop.call_later(self.close_timeout or 0, self.transport.abort)


__all__ = ["StreamConnection", "StreamProtocol", "Refusal", "Violation", "MAX_FRAGMENTS"]
