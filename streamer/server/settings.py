"""Limits and knobs of the websocket server, as one validated dataclass."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from streamer.server.store import DEFAULT_STATE_TTL, DEFAULT_VOICEPRINT_TTL


def _positive(name: str, value: Any, *, allow_zero: bool = False, whole: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if whole and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class ServerSettings:
    """Every limit of the server, grouped by purpose.

    Attributes:
        max_connections: Open websocket streams at once; the next handshake gets HTTP 503.
        max_frame_bytes: Largest message (binary audio or text) accepted; a larger one
            gets the ``frame_too_large`` error (close code 1009) after the audio before
            it is processed. Its payload is skipped as it arrives, never buffered. With
            ``receive_queue`` it bounds the memory one connection can hold in received
            frames (about ``receive_queue * max_frame_bytes``).
        receive_queue: Frames websockets buffers per connection before it stops reading
            from the socket (its ``max_queue``).
        max_stream_seconds: Longest stream (seconds of received audio); the frame that
            crosses it gets the ``stream_too_long`` error after the audio before it is
            processed. 0 disables the limit.
        min_step, max_window_ratio: Bounds on what one stream may cost, checked at
            ``start`` against its resolved config (``bad_config`` error naming the
            setting). The engine analyses its ``duration``-second buffer every ``step``
            seconds, so each moment of audio is analysed ``duration / step`` times (20
            with the default config) and a small step adds engine calls and events. 0
            disables a bound.
        idle_timeout: Seconds without any message from a client (while the server is
            waiting for one) after which the stream ends with ``idle_timeout``.
            0 disables it.
        ping_interval, ping_timeout: Websocket keep-alive pings (seconds); 0 disables them.
        close_timeout: Seconds to wait for a client to complete the closing handshake.
        max_pending_seconds: Received but not yet processed audio of one stream above
            which the server stops reading from it (flow control pushes back on the
            client) until half of it is processed. A real-time stream that gets there
            also receives a ``falling_behind`` warning.
        max_feed_seconds: Most audio handed to the engine in one call, so that one stream
            cannot hold a worker for long.
        send_queue_size: Events waiting to be written to one client; when full for
            ``send_timeout`` seconds the client is disconnected as too slow.
        send_timeout: See ``send_queue_size``; also how long a connection's write buffer
            may stay above ``write_limit`` before the connection is closed as too slow.
        write_limit: High-water mark of one connection's socket write buffer (bytes).
            Above it the server stops reading from that client (so a client that sends
            pings but does not read cannot make it queue pongs without bound) until the
            buffer drains; after ``send_timeout`` the connection is closed (1008) and
            dropped.
        workers: Threads for the work outside the streams' steps (setting up a stream,
            enrolling a voiceprint). ``None`` means two per CPU core. The streams' steps
            run in the scheduler's thread (:mod:`streamer.scheduler`).
        batch_max_size: Most rows in one forward pass of the scheduler; 1 runs every
            stream's model calls on their own.
        min_tick: Shortest time between the starts of two scheduler ticks, in seconds.
            0 starts a tick as soon as a step is due (ticks grow with the load by
            themselves); more makes larger batches at the cost of that much latency.
        torch_threads: torch intra-op threads of each worker thread; ``None``
            leaves torch's default. torch's OpenMP setting is per thread (a new thread does
            not inherit ``torch.set_num_threads`` of the main one), so the server sets it in
            every thread it starts. 1 is right when streams run in parallel threads: more
            threads per stream compete with the other streams' for the same cores.
        token: Bearer token clients must present (header or ``?token=``); ``None``
            means no authentication.
        public_metrics: Serve ``/metrics`` without the token when one is set. By default
            it needs the token too (its numbers describe the streams); ``/healthz`` and the
            web page never need it.
        allowed_origins: Browser origins (``Origin`` header) allowed to connect; empty
            means any. Requests without an ``Origin`` header (non-browser clients) are
            always allowed.
        shutdown_timeout: Seconds given to open streams to finish after SIGTERM.
        redis_url: Redis holding what outlives a connection, shared by every replica
            (see :mod:`streamer.server.store`): saved stream states, redeemed session
            tokens, the voiceprint registry. ``None``: this process keeps them.
        state_ttl: Seconds a saved stream state stays resumable by its ``resume_id``.
        state_save_interval: Seconds of processed audio between the saves of a stream's
            state (besides those at ``snapshot``, ``end`` and drain); 0 saves only then.
        voiceprint_ttl: Seconds a registered voiceprint is kept; 0 keeps it until deleted.
        max_body_bytes: Largest HTTP request body (``POST /v1/voiceprints`` audio).
        session_ttl: Lifetime of the single-use stream URLs of ``POST /v1/sessions``,
            seconds.
        state_secret: Key of the HMAC that protects the speaker states of ``end`` and
            ``snapshot`` (session resume). ``None``: derived from ``token``, else random
            for the process (states then resume only on that process until it restarts).
        max_load, max_lag, max_busy, max_tick, cpus: Admission by measured capacity (see
            :mod:`streamer.server.admission`): a new stream is refused (HTTP 503,
            ``too_many_connections``) when the open streams plus the newcomer, each at
            the measured CPU cost of a real-time stream, would keep more than
            ``max_load`` of ``cpus`` busy; while streams are more than ``max_lag``
            seconds (95th percentile) behind real time; or when the scheduler, at its
            measured share of time in ticks scaled to the newcomer, would be busy more
            than ``max_busy`` of the time (the rule that sees a GPU's capacity); or
            while the scheduler's ticks take more than ``max_tick`` seconds (95th
            percentile: the rule that sees other processes on the same GPU; past half
            of it, one newcomer every 0.5 s). 0 turns a rule off.
            ``cpus`` is the cores this process may use (``None``: those it may run on;
            under ``--processes N``, shared out between them).
    """

    max_connections: int = 64
    max_frame_bytes: int = 1 << 20
    receive_queue: int = 4
    max_stream_seconds: float = 4 * 3600.0
    min_step: float = 0.1
    max_window_ratio: float = 40.0
    idle_timeout: float = 60.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    max_pending_seconds: float = 5.0
    max_feed_seconds: float = 2.0
    send_queue_size: int = 256
    send_timeout: float = 10.0
    write_limit: int = 1 << 16
    workers: int | None = None
    batch_max_size: int = 64
    min_tick: float = 0.0
    torch_threads: int | None = 1
    # Secrets stay out of the repr (settings may be logged or shown in a traceback).
    token: str | None = field(default=None, repr=False)
    public_metrics: bool = False
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    shutdown_timeout: float = 30.0
    session_ttl: float = 60.0
    state_secret: str | None = field(default=None, repr=False)
    max_load: float = 0.5
    max_lag: float = 1.0
    max_busy: float = 0.9
    max_tick: float = 0.2
    cpus: float | None = None
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    state_ttl: float = DEFAULT_STATE_TTL
    state_save_interval: float = 5.0
    voiceprint_ttl: float = DEFAULT_VOICEPRINT_TTL
    max_body_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_frame_bytes", "receive_queue", "send_queue_size",
                     "write_limit", "batch_max_size", "max_body_bytes"):
            _positive(name, getattr(self, name), whole=True)
            setattr(self, name, int(getattr(self, name)))
        for name in ("workers", "torch_threads"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name), whole=True)
                setattr(self, name, int(getattr(self, name)))
        for name in ("max_stream_seconds", "min_step", "max_window_ratio", "idle_timeout",
                     "ping_interval", "ping_timeout", "min_tick"):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("close_timeout", "max_pending_seconds", "max_feed_seconds",
                     "send_timeout", "shutdown_timeout", "session_ttl", "state_ttl"):
            _positive(name, getattr(self, name))
        for name in ("max_load", "max_lag", "max_busy", "max_tick", "state_save_interval",
                     "voiceprint_ttl"):
            _positive(name, getattr(self, name), allow_zero=True)
        if self.max_busy > 1:
            raise ValueError(f"max_busy is a share of time, at most 1, got {self.max_busy}")
        if self.cpus is not None:
            _positive("cpus", self.cpus)
        if self.max_feed_seconds > self.max_pending_seconds:
            raise ValueError(f"max_feed_seconds ({self.max_feed_seconds}) must not exceed "
                             f"max_pending_seconds ({self.max_pending_seconds})")
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError("token must be a non-empty string or None")
        if self.state_secret is not None and (not isinstance(self.state_secret, str)
                                              or not self.state_secret):
            raise ValueError("state_secret must be a non-empty string or None")
        if self.redis_url is not None and (not isinstance(self.redis_url, str) or not
                                           self.redis_url.startswith(("redis://", "rediss://",
                                                                      "unix://"))):
            raise ValueError(f"redis_url must be a redis://, rediss:// or unix:// URL, got "
                             f"{self.redis_url!r}")
        if not isinstance(self.public_metrics, bool):
            raise ValueError(f"public_metrics must be True or False, got {self.public_metrics!r}")
        if isinstance(self.allowed_origins, str):
            raise ValueError("allowed_origins must be a sequence of origins, not one string")
        self.allowed_origins = tuple(self.allowed_origins)
        for origin in self.allowed_origins:
            if not isinstance(origin, str) or not origin or origin != origin.strip():
                raise ValueError(f"bad allowed origin {origin!r}")

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers is not None else 2 * (os.cpu_count() or 1)

    @property
    def cpu_count(self) -> float:
        """Cores this process may use (``cpus``, or those it may run on)."""
        return self.cpus if self.cpus is not None else float(cpu_count())

    def init_thread(self) -> None:
        """Per-thread setup of a thread that runs models (torch intra-op threads)."""
        if self.torch_threads is None:
            return
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(self.torch_threads)

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header may go on."""
        if origin is None or not self.allowed_origins or "*" in self.allowed_origins:
            return True
        return origin.rstrip("/") in {o.rstrip("/") for o in self.allowed_origins}


__all__ = ["ServerSettings", "cpu_count"]
