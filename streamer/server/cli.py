"""``streamer serve``: the command-line entry of the websocket server.

``streamer.cli`` calls :func:`add_arguments` on the ``serve`` sub-parser and then
:func:`main` with the parsed arguments.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from streamer.cliargs import add_model_arguments, frontend_from_args
from streamer.errors import StreamerError
from streamer.server.options import (LOG_FORMAT, configure_logging, read_token,
                                     settings_from_args)
from streamer.server.processes import process_count, serve_processes
from streamer.server.settings import ServerSettings

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
#: ``STREAMER_MAX_CONNECTIONS=64`` sets ``--max-connections 64`` (containers).
ENV_PREFIX = "STREAMER_"
#: Flags not taken from their variable: ``STREAMER_TOKEN`` is read as the token itself
#: (by :func:`read_token`), without --token's warning.
_NOT_FROM_ENV = {"help", "token"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``streamer serve`` to ``parser``."""
    _add_network_and_model_flags(parser)
    _add_limit_flags(parser)
    access = parser.add_argument_group(
        "access", "A token set with --token is visible to every user of this machine "
        "(ps, /proc): prefer --token-file or the STREAMER_TOKEN environment variable.")
    token = access.add_mutually_exclusive_group()
    token.add_argument("--token", default=None,
                       help="bearer token clients must send, visible to other local users "
                            "(default: --token-file, else $STREAMER_TOKEN; none means no "
                            "authentication)")
    token.add_argument("--token-file", default=None, metavar="PATH",
                       help="read the bearer token from this file (surrounding whitespace "
                            "ignored)")
    access.add_argument("--public-metrics", action="store_true",
                        help="serve /metrics without the token when one is set (default: "
                             "/metrics needs it too)")
    access.add_argument("--allowed-origins", default="",
                        help="comma-separated browser origins allowed to connect "
                             "(default: any)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="default %(default)s")
    parser.epilog = (f"Every flag can also be set by an environment variable: {ENV_PREFIX} "
                     "and the flag's name in capitals, dashes as underscores "
                     "(STREAMER_MAX_CONNECTIONS=128; 1 or 0 for on/off flags). A flag on "
                     "the command line wins.")
    apply_environment(parser)


def env_name(option: str) -> str:
    """The environment variable of a ``--long-flag``."""
    return ENV_PREFIX + option.lstrip("-").upper().replace("-", "_")


def apply_environment(parser: argparse.ArgumentParser,
                      environ: Any = None) -> None:
    """Take the defaults of ``parser``'s flags from their ``STREAMER_*`` variables. A bad
    value is not an error of every ``streamer`` command: :func:`main` reports it."""
    environ = os.environ if environ is None else environ
    problems = []
    sources: dict[str, tuple[str, Any]] = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public iterator
        options = [o for o in action.option_strings if o.startswith("--")]
        if not options or action.dest in _NOT_FROM_ENV or isinstance(
                action, argparse._AppendAction):  # noqa: SLF001
            continue
        name = env_name(options[0])
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            action.default = _env_value(action, raw)
            sources[action.dest] = (name, action.default)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            problems.append(f"{name}={raw!r}: {error}")
    parser.set_defaults(env_problems=problems, env_sources=sources)


def _naming_source(error: ValueError, args: argparse.Namespace) -> str:
    """``error`` of a setting, naming the environment variable its value came from:
    a setting's error starts with the setting's name, and a value that the command line
    did not override is the variable's."""
    message = str(error)
    field = message.split(" ", 1)[0]
    name, value = getattr(args, "env_sources", {}).get(field, (None, None))
    if name is None or getattr(args, field, None) != value:
        return message
    return f"{name}: {message}"


def _env_value(action: argparse.Action, raw: str) -> Any:
    if isinstance(action, (argparse._StoreTrueAction,  # noqa: SLF001
                           argparse._StoreFalseAction)):  # noqa: SLF001
        if raw.lower() not in _TRUE | _FALSE:
            raise ValueError("expected 1/0, true/false, yes/no or on/off")
        return (raw.lower() in _TRUE) == isinstance(action, argparse._StoreTrueAction)  # noqa: SLF001
    value = action.type(raw) if callable(action.type) else raw
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    return value


def _add_network_and_model_flags(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="interface to listen on (0.0.0.0 for all; default %(default)s)")
    net.add_argument("--port", type=int, default=None,
                     help=f"TCP port (default: $PORT, else {DEFAULT_PORT}; 0 picks a free one)")
    models = add_model_arguments(parser, threads=False)
    models.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads of each worker thread, 0 for torch's "
                             "default (default 1: streams already run in parallel threads)")


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    defaults = ServerSettings()
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="open streams at once (default %(default)s)")
    limits.add_argument("--max-frame-bytes", type=int, default=defaults.max_frame_bytes,
                        help="largest binary audio frame (default %(default)s)")
    limits.add_argument("--max-stream-seconds", type=float,
                        default=defaults.max_stream_seconds,
                        help="longest stream in seconds of audio, 0 for no limit "
                             "(default %(default)s)")
    limits.add_argument("--min-step", type=float, default=defaults.min_step,
                        help="smallest step a stream may choose, in seconds, 0 for none "
                             "(default %(default)s)")
    limits.add_argument("--max-window-ratio", type=float, default=defaults.max_window_ratio,
                        help="largest duration / step a stream may choose (how many times "
                             "each moment of audio is analysed; 20 with the default config), "
                             "0 for none (default %(default)s)")
    limits.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout,
                        help="seconds without a client message before the stream ends, "
                             "0 for none (default %(default)s)")
    limits.add_argument("--max-pending-seconds", type=float,
                        default=defaults.max_pending_seconds,
                        help="unprocessed audio per stream before reading pauses and a "
                             "falling_behind warning (default %(default)s)")
    limits.add_argument("--workers", type=int, default=None,
                        help="threads of each process for the work outside the streams' "
                             "steps: setting a stream up, enrolling voiceprints (default: 2 "
                             "per CPU core, shared out between the processes)")
    limits.add_argument("--processes", type=int, default=1,
                        help="server processes on the same port (SO_REUSEPORT), each with "
                             "its own models; 0 for one per CPU core, at most 16; "
                             "--max-connections is split between them (default 1)")
    limits.add_argument("--session-ttl", type=float, default=defaults.session_ttl,
                        help="seconds a single-use stream URL from POST /v1/sessions stays "
                             "valid (default %(default)s)")
    limits.add_argument("--max-load", type=float, default=defaults.max_load,
                        help="admission: refuse new streams (503) when the open ones plus "
                             "the newcomer, at the measured cost of a real-time stream, would "
                             "keep more than this share of the CPUs busy; 0 turns it off "
                             "(default %(default)s: the GIL lets one process use about one "
                             "core; --processes N uses more)")
    limits.add_argument("--max-lag", type=float, default=defaults.max_lag,
                        help="admission: refuse new streams while the open ones are more "
                             "than this many seconds (95th percentile) behind real time; 0 "
                             "turns it off (default %(default)s)")
    limits.add_argument("--max-busy", type=float, default=defaults.max_busy,
                        help="admission: refuse new streams when the scheduler, which runs "
                             "every stream's steps and waits for their model calls (on the "
                             "CPU or a GPU), would spend more than this share of its time in "
                             "ticks with the newcomer; 0 turns it off (default %(default)s)")
    limits.add_argument("--max-tick", type=float, default=defaults.max_tick,
                        help="admission: refuse new streams while the scheduler's ticks take "
                             "more than this many seconds (95th percentile), whatever slows "
                             "them, e.g. other processes on the same GPU; 0 turns it off "
                             "(default %(default)s)")
    limits.add_argument("--cpus", type=float, default=None,
                        help="CPU cores the server may use, for admission (default: those "
                             "it may run on, shared out between --processes)")
    limits.add_argument("--batch-max-size", type=int, default=defaults.batch_max_size,
                        help="most rows in one forward pass of the scheduler, which runs "
                             "the steps of all due streams together; 1 disables batching "
                             "(default %(default)s)")
    limits.add_argument("--min-tick", type=float, default=defaults.min_tick,
                        help="shortest time in seconds between two scheduler ticks: more "
                             "makes larger batches at the cost of that much latency "
                             "(default %(default)s: a tick starts as soon as a step is due)")
    limits.add_argument("--shutdown-timeout", type=float, default=defaults.shutdown_timeout,
                        help="seconds open streams get to finish after SIGTERM before they "
                             "are closed (default %(default)s)")
    shared = parser.add_argument_group(
        "shared state", "What outlives a connection: saved stream states (resume by "
        "resume_id), redeemed single-use URLs, the voiceprint registry. Kept in this "
        "process unless --redis-url names a Redis that every replica shares.")
    shared.add_argument("--redis-url", default=None, metavar="URL",
                        help="redis://[:password@]host:port/db (needs the redis extra: pip "
                             "install 'streamer[redis]'; default: none, in-process)")
    shared.add_argument("--state-ttl", type=float, default=defaults.state_ttl,
                        help="seconds a saved stream state stays resumable "
                             "(default %(default)s)")
    shared.add_argument("--state-save-interval", type=float,
                        default=defaults.state_save_interval,
                        help="seconds of audio between the saves of a stream's state, "
                             "besides those at snapshot, end and drain; 0 for only those "
                             "(default %(default)s)")
    shared.add_argument("--voiceprint-ttl", type=float, default=defaults.voiceprint_ttl,
                        help="seconds a voiceprint registered by POST /v1/voiceprints?name= "
                             "is kept, 0 until deleted (default %(default)s: 30 days)")


def resolve_port(port: int | None) -> int:
    if port is not None:
        return port
    value = os.environ.get("PORT", "").strip()
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or int(value) > 65535:
        raise ValueError(f"PORT must be a TCP port number, got {value!r}")
    return int(value)


def main(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit status."""
    configure_logging(getattr(args, "log_level", "INFO"))
    if getattr(args, "token", None) is not None:
        logger.warning("--token is visible to other users of this machine (ps, /proc): "
                       "prefer --token-file or the STREAMER_TOKEN environment variable")
    try:
        for problem in getattr(args, "env_problems", []):
            raise ValueError(problem)
        settings = settings_from_args(args)
        port = resolve_port(args.port)
        processes = process_count(getattr(args, "processes", 1))
    except ValueError as error:
        logger.error("bad setting: %s", _naming_source(error, args))
        return 2
    if processes > 1:
        return serve_processes(args, processes, port)
    try:
        frontend = frontend_from_args(args)
    except StreamerError as error:
        logger.error("cannot load the models: %s", error)
        return 1
    try:
        asyncio.run(serve(frontend, settings, args.host, port))
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", args.host, port, error)
        return 1
    return 0


async def serve(frontend: Any, settings: ServerSettings, host: str, port: int) -> None:
    """Serve ``frontend`` on ``host:port`` until SIGTERM or SIGINT, then finish streams."""
    from streamer.server.app import DiarizationServer

    server = DiarizationServer(frontend, settings)
    try:
        await server.start(host, port)
    except BaseException:
        await server.shutdown()
        raise
    await server.serve_until_signal()


__all__ = ["LOG_FORMAT", "add_arguments", "apply_environment", "configure_logging", "main",
           "read_token", "serve", "settings_from_args"]
