"""What every session of one server shares: settings, metrics, models, the scheduler
that runs the streams' steps, worker threads for the rest."""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from streamer.config import StreamConfig
from streamer.models.calls import Steps
from streamer.scheduler import TickScheduler
from streamer.errors import ConfigError
from streamer.server.admission import Admission
from streamer.server.metrics import ServerMetrics
from streamer.server.settings import ServerSettings
from streamer.server.state import StateSealer
from streamer.server.store import Store

#: ``engine_factory(config) -> engine`` builds the per-stream engine (a StreamingDiarizer).
EngineFactory = Callable[[StreamConfig], Any]


@dataclass
class ServerContext:
    """Shared, read-only (apart from metrics and the store) resources of one server."""

    settings: ServerSettings
    metrics: ServerMetrics
    executor: ThreadPoolExecutor
    engine_factory: EngineFactory
    models: dict[str, Any]
    #: Runs every stream's engine steps, their model calls batched per tick.
    scheduler: TickScheduler
    admission: Admission
    states: StateSealer
    #: Saved stream states, redeemed tokens and registered voiceprints (or Redis's).
    store: Store

    def new_engine(self, config: StreamConfig) -> Any:
        return self.engine_factory(config)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking call outside the streams' steps, in the worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def step(self, make: Callable[[], Steps[Any]]) -> Any:
        """Engine work of one stream (``make()`` gives its steps, e.g.
        ``engine.feed_steps(samples)``), in the scheduler's next tick."""
        return await asyncio.wrap_future(self.scheduler.submit(make))

    def describe(self) -> dict[str, Any]:
        return self.models

    def client_limits(self) -> dict[str, Any]:
        """The limits a client should know about, sent in ``ready``."""
        s = self.settings
        return {"max_frame_bytes": s.max_frame_bytes,
                "max_stream_seconds": s.max_stream_seconds or None,
                "idle_timeout": s.idle_timeout or None,
                "max_pending_seconds": s.max_pending_seconds,
                "min_step": s.min_step or None,
                "max_window_ratio": s.max_window_ratio or None}

    def check_cost(self, config: StreamConfig) -> None:
        """Refuse a (resolved) stream config that costs more than this server allows."""
        s = self.settings
        if s.min_step and config.step < s.min_step - 1e-9:
            raise ConfigError(f"step {config.step:g} s is below this server's min_step of "
                              f"{s.min_step:g} s")
        ratio = config.duration / config.step
        if s.max_window_ratio and ratio > s.max_window_ratio + 1e-9:
            raise ConfigError(
                f"duration / step is {ratio:g} ({config.duration:g} s / {config.step:g} s), "
                f"above this server's max_window_ratio of {s.max_window_ratio:g}: raise "
                "step or shorten duration")


__all__ = ["ServerContext", "EngineFactory"]
