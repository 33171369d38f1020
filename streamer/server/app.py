"""The websocket server: HTTP routes, handshake checks, one :class:`StreamSession` per
connection, graceful shutdown.

Usage::

    async with DiarizationServer(frontend, ServerSettings()) as server:
        await server.start("127.0.0.1", 0)
        print(server.port)
        await server.serve_until_signal()
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamer.config import StreamConfig
from streamer.server import protocol
from streamer.server.admission import Admission
from streamer.scheduler import TickScheduler
from streamer.server.connection import StreamConnection
from streamer.server.context import ServerContext
from streamer.server.metrics import CONTENT_TYPE, ServerMetrics
from streamer.server.redact import redact_secrets
from streamer.server.registry import PATH as VOICEPRINTS_PATH
from streamer.server.registry import VoiceprintRoutes, file_enroller
from streamer.server.routes import (
    READ_METHODS,
    WEB_ROOT,
    for_method,
    not_allowed,
    response,
    static_file,
    static_path,
)
from streamer.server.session import StreamSession
from streamer.server.settings import ServerSettings
from streamer.server.state import StateSealer
from streamer.server.store import StoreUnavailable, open_store
from streamer.server.tokens import SessionTokens

logger = logging.getLogger(__name__)
#: Where a backend asks for a single-use stream URL.
SESSIONS_PATH = "/v1/sessions"


def _engine_factory(frontend: Any) -> Callable[[StreamConfig], Any]:
    from streamer.engine import StreamingDiarizer

    def build(config: StreamConfig) -> Any:
        return StreamingDiarizer(frontend, config)

    return build


class DiarizationServer:
    """Serves ``/v1/stream`` and the HTTP routes for one shared, loaded frontend.

    The steps of all its streams run in one :class:`~streamer.scheduler.TickScheduler`,
    which batches their model calls; other blocking work (setting a stream up, enrolling
    a voiceprint) runs in a pool of worker threads.
    """

    def __init__(self, frontend: Any, settings: ServerSettings | None = None, *,
                 web_root: Path = WEB_ROOT, worker: int | None = None) -> None:
        self.settings = settings if settings is not None else ServerSettings()
        self.worker = worker
        self.metrics = ServerMetrics(worker=worker)
        self.web_root = web_root
        self.frontend = frontend
        self.scheduler = TickScheduler(
            self.frontend.models, max_batch=self.settings.batch_max_size,
            min_tick=self.settings.min_tick, on_batch=self.metrics.batch,
            on_tick=self._ticked, thread_init=self.settings.init_thread)
        self._executor = ThreadPoolExecutor(self.settings.worker_count,
                                            thread_name_prefix="streamer-engine",
                                            initializer=self.settings.init_thread)
        self.context = ServerContext(
            settings=self.settings, metrics=self.metrics, executor=self._executor,
            engine_factory=_engine_factory(self.frontend), models=self._describe(),
            scheduler=self.scheduler,
            admission=Admission(self.settings.cpu_count, self.settings.max_load,
                                self.settings.max_lag, self.settings.max_busy,
                                self.settings.max_tick),
            states=StateSealer(self.settings.state_secret, self.settings.token),
            store=open_store(self.settings.redis_url))
        self.voiceprints = VoiceprintRoutes(
            file_enroller(self.frontend), self.context.run, self.context.store,
            self.settings.voiceprint_ttl, self.settings.max_body_bytes,
            on_enrolled=lambda: self.metrics.count("voiceprints_enrolled"))
        self.sessions: set[StreamSession] = set()
        self.session_tokens = SessionTokens(self.settings.token, self.settings.session_ttl)
        self._server: Server | None = None
        self._stopping = False

    def _ticked(self, jobs: int, seconds: float) -> None:
        self.metrics.tick(jobs, seconds)
        self.context.admission.record_tick(jobs, seconds)

    def _describe(self) -> dict[str, Any]:
        """``ready``'s ``models``; with the worker index under ``--processes N``."""
        models = self.frontend.describe()
        return models if self.worker is None else {**models, "worker": self.worker}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 8000, *,
                    reuse_port: bool = False) -> None:
        """Listen on ``host:port`` (``reuse_port``: with SO_REUSEPORT, for a worker of
        ``--processes N``, whose parent logs the "serving on" line)."""
        s = self.settings
        self._server = await serve(
            self._handle, host, port, process_request=self._process_request,
            create_connection=StreamConnection.factory(frame_limit=s.max_frame_bytes,
                                                       stall_timeout=s.send_timeout,
                                                       body_limit=s.max_body_bytes,
                                                       accepts_body=self._accepts_body),
            max_size=s.max_frame_bytes, max_queue=s.receive_queue, compression=None,
            logger=redact_secrets(logging.getLogger("websockets.server")),
            ping_interval=s.ping_interval or None, ping_timeout=s.ping_timeout or None,
            close_timeout=s.close_timeout, write_limit=s.write_limit,
            server_header="streamer", reuse_port=reuse_port)
        if self.context.store.shared:
            try:
                await self.context.store.ping()
            except StoreUnavailable as error:
                # Streams work without it: only resume by id, single-use URLs and the
                # registry need it, and they answer with a clear error meanwhile.
                logger.warning("%s", error)
        if self.worker is None:
            logger.info("streamer serving on http://%s:%d (websocket %s)", host, self.port,
                        protocol.PATH)
        else:
            logger.info("worker %d listening on http://%s:%d", self.worker, host, self.port)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self) -> None:
        """Stop accepting, let every open stream finish (final turns, ``end``), release."""
        if self._stopping:
            return
        self._stopping = True
        if self._server is not None:
            logger.info("shutting down: finishing %d open stream(s)", len(self.sessions))
            self._server.close(close_connections=False)
            for session in list(self.sessions):
                session.shutdown()
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout):
                    await self._server.wait_closed()
            except TimeoutError:
                logger.warning("streams still open after %g s: closing them",
                               self.settings.shutdown_timeout)
                self._server.close(close_connections=True)
                await self._server.wait_closed()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.scheduler.close(wait=False)
        await self.context.store.close()

    async def __aenter__(self) -> "DiarizationServer":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    async def serve_until_signal(self, signals: tuple[int, ...] = (signal.SIGTERM,
                                                                  signal.SIGINT)) -> None:
        """Run until one of ``signals`` arrives, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for number in signals:
            loop.add_signal_handler(number, stop.set)
        try:
            await stop.wait()
            logger.info("signal received")
        finally:
            for number in signals:
                loop.remove_signal_handler(number)
        await self.shutdown()

    # -- connections -------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        refusal = self._refusal()
        if refusal is not None:
            await self._refuse(connection, *refusal)
            return
        session = StreamSession(connection, self.context)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def _refusal(self, pace: bool = False) -> tuple[str, protocol.TooManyConnections] | None:
        """``(reason for the metrics, error)`` when a new stream must be refused: at
        ``max_connections``, shutting down, or beyond the measured capacity (``pace``:
        or too soon after the last newcomer near it, see :mod:`.admission`)."""
        if self._stopping:
            reason, message = "shutting_down", "the server is shutting down"
        elif len(self.sessions) >= self.settings.max_connections:
            reason, message = ("too_many_connections", "the server is at its limit of "
                               f"{self.settings.max_connections} streams")
        else:
            reason, message = "overloaded", self.context.admission.refusal(
                len(self.sessions), pace)
            if message is None:
                return None
        return reason, protocol.TooManyConnections(message)

    async def _refuse(self, connection: ServerConnection, reason: str,
                      error: protocol.TooManyConnections) -> None:
        """A connection that slipped past the handshake check while at capacity."""
        self.metrics.reject(reason)
        try:
            await connection.send(protocol.encode(protocol.error_message(error)))
            await connection.close(protocol.close_code(error), error.code)
        except ConnectionClosed:
            pass

    async def _process_request(self, connection: StreamConnection, request: Request
                               ) -> Response | None:
        url = urlsplit(request.path)
        # websockets before 17 refuses other methods itself, without this attribute.
        method = getattr(request, "method", "GET")
        for name in ("Origin", "Authorization"):
            if len(request.headers.get_all(name)) > 1:
                return response(400, f"more than one {name} header\n")
        reader = connection.protocol.reader
        if url.path != protocol.PATH:
            return await self._http_route(url.path, method, request, url.query, reader)
        if method != "GET":
            return not_allowed(("GET",))
        if reader.body_length or "X-Streamer-Transfer-Encoding" in request.headers:
            return response(400, "a websocket handshake has no body\n")
        if not self.settings.origin_allowed(request.headers.get("Origin")):
            self.metrics.reject("origin")
            return response(403, "origin not allowed\n")
        session_token = None
        if not self._authorized(request, url.query):
            session_token = self._session_token(url.query)
            if session_token is None:
                return self._unauthorized()
        refusal = self._refusal(pace=True)
        if refusal is not None:
            self.metrics.reject(refusal[0])
            body = protocol.encode(protocol.error_message(refusal[1]))
            return response(503, body + "\n", "application/json", extra={"Retry-After": "5"})
        if session_token is not None:
            session = self.session_tokens.redeem(session_token)
            if session is None:
                return self._unauthorized()  # pragma: no cover - checked just above
            if self.context.store.shared:
                # Single use across replicas: the first to claim the id in Redis wins.
                try:
                    claimed = await self.context.store.claim_token(
                        session, self.settings.session_ttl)
                except StoreUnavailable as error:
                    return response(503, f"{error}\n", extra={"Retry-After": "5"})
                if not claimed:
                    return self._unauthorized()
        self.context.admission.admitted()
        return None

    def _unauthorized(self) -> Response:
        self.metrics.reject("unauthorized")
        return response(401, "missing or wrong token\n",
                        extra={"WWW-Authenticate": 'Bearer realm="streamer"'})

    def _session_token(self, query: str) -> str | None:
        """The single-use session token of ``?token=`` when one is valid now (it is used
        up only once the handshake is accepted)."""
        return next((t for t in parse_qs(query).get("token", [])
                     if self.session_tokens.valid(t)), None)

    def _issue_session(self, method: str, request: Request, query: str) -> Response:
        """``POST /v1/sessions``: a single-use stream URL, for the server token's holder."""
        if method != "POST":
            return not_allowed(("POST",))
        if self.settings.token is None:
            return response(404, "session tokens need a server token (--token-file or "
                                 "STREAMER_TOKEN): without one, streams need no token\n")
        if not self._authorized(request, query):
            return self._unauthorized()
        issued = self.session_tokens.issue()
        self.metrics.count("sessions_issued")
        scheme = ("wss" if request.headers.get("X-Forwarded-Proto", "").lower() == "https"
                  else "ws")
        host = request.headers.get("Host") or f"127.0.0.1:{self.port}"
        body = protocol.encode({
            "id": issued.id, "url": f"{scheme}://{host}{protocol.PATH}?token={issued.token}",
            "token": issued.token, "expires_at": round(issued.expires_at, 3)})
        return response(201, body + "\n", "application/json")

    async def _voiceprint_route(self, path: str, method: str, request: Request, query: str,
                                reader: Any) -> Response:
        """``/v1/voiceprints``: for the server token's holder (anyone without a token)."""
        if not self._authorized(request, query):
            return self._unauthorized()
        if method == "POST":
            refusal = self._refusal()
            if refusal is not None:  # enrolment runs the models: not beyond capacity
                self.metrics.reject(refusal[0])
                return response(503, f"{refusal[1]}\n", extra={"Retry-After": "5"})
        return await self.voiceprints.handle(method, path, query, request.headers,
                                             reader.body_length, reader.body)

    def _accepts_body(self, method: str, target: str, authorization: str) -> bool:
        """Whether to read a request's body: an upload to ``POST /v1/voiceprints`` by the
        server token's holder (anyone else is answered without the server holding it)."""
        url = urlsplit(target)
        return (method == "POST" and url.path == VOICEPRINTS_PATH
                and self._token_ok(authorization, url.query))

    def _authorized(self, request: Request, query: str) -> bool:
        return self._token_ok(request.headers.get("Authorization", ""), query)

    def _token_ok(self, authorization: str, query: str) -> bool:
        """Whether ``Authorization: Bearer`` or ``?token=`` holds the server's token (or
        the server has none)."""
        expected = self.settings.token
        if expected is None:
            return True
        offered = []
        if authorization[:7].lower() == "bearer ":
            offered.append(authorization[7:].strip())
        offered += parse_qs(query).get("token", [])
        return any(hmac.compare_digest(o.encode(), expected.encode()) for o in offered)

    async def _http_route(self, path: str, method: str, request: Request, query: str,
                          reader: Any) -> Response:
        if path == SESSIONS_PATH:
            return self._issue_session(method, request, query)
        if path == VOICEPRINTS_PATH or path.startswith(VOICEPRINTS_PATH + "/"):
            return await self._voiceprint_route(path, method, request, query, reader)
        builtin = path in ("/healthz", "/readyz", "/metrics")
        page = None if builtin else static_path(path, self.web_root)
        if not builtin and page is None:
            return response(404, "not found\n")
        if method not in READ_METHODS:
            return not_allowed()
        if path == "/metrics" and not (self.settings.public_metrics
                                       or self._authorized(request, query)):
            return for_method(method, self._unauthorized())
        if path == "/healthz":
            answer = response(200, "ok\n")
        elif path == "/readyz":
            refusal = self._refusal()
            answer = (response(200, "ready\n") if refusal is None else
                      response(503, f"not ready: {refusal[1]}\n", extra={"Retry-After": "5"}))
        elif path == "/metrics":
            answer = response(200, self.metrics.render(), CONTENT_TYPE)
        else:
            answer = static_file(page)
        return for_method(method, answer)


__all__ = ["DiarizationServer"]
