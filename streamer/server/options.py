"""From ``streamer serve``'s parsed flags to the server's settings, and its logging: what
the command (:mod:`streamer.server.cli`) and its worker processes
(:mod:`streamer.server.processes`) both need."""
from __future__ import annotations

import argparse
import logging
import os

from streamer.server.settings import ServerSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def read_token(args: argparse.Namespace) -> str | None:
    """The token from ``--token``, ``--token-file`` or ``$STREAMER_TOKEN``, in that order
    (raises ValueError for a token file that is unreadable or empty)."""
    if args.token is not None:
        return args.token
    path = getattr(args, "token_file", None)
    if path is None:
        return os.environ.get("STREAMER_TOKEN", "").strip() or None
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ValueError(f"cannot read the token file {path}: {reason}") from None
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The :class:`ServerSettings` the flags describe (raises ValueError)."""
    token = read_token(args)
    origins = tuple(o.strip() for o in (args.allowed_origins or "").split(",") if o.strip())
    return ServerSettings(
        max_connections=args.max_connections, max_frame_bytes=args.max_frame_bytes,
        max_stream_seconds=args.max_stream_seconds, idle_timeout=args.idle_timeout,
        min_step=args.min_step, max_window_ratio=args.max_window_ratio,
        max_pending_seconds=args.max_pending_seconds,
        max_feed_seconds=min(ServerSettings.max_feed_seconds, args.max_pending_seconds),
        workers=args.workers, batch_max_size=args.batch_max_size,
        min_tick=args.min_tick, torch_threads=args.torch_threads or None,
        token=token, public_metrics=getattr(args, "public_metrics", False),
        allowed_origins=origins, max_load=args.max_load, max_lag=args.max_lag,
        max_busy=args.max_busy, max_tick=args.max_tick,
        cpus=args.cpus, session_ttl=args.session_ttl, shutdown_timeout=args.shutdown_timeout,
        redis_url=args.redis_url, state_ttl=args.state_ttl,
        state_save_interval=args.state_save_interval, voiceprint_ttl=args.voiceprint_ttl,
        state_secret=os.environ.get("STREAMER_STATE_SECRET", "").strip() or None)


def configure_logging(level: str, fmt: str = LOG_FORMAT) -> None:
    """Log at ``level``; the websockets library's own line per HTTP request and
    connection only at DEBUG (the server logs each stream's open and close itself)."""
    logging.basicConfig(level=level, format=fmt)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("websockets").setLevel(logging.WARNING)


__all__ = ["LOG_FORMAT", "configure_logging", "read_token", "settings_from_args"]
