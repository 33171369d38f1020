"""``streamer serve --processes N``: N server processes sharing one port (SO_REUSEPORT).

One process runs out of GIL long before a machine runs out of cores (or a GPU out of
work), so N > 1 starts N *worker processes*, each the single-process server with its
own models, scheduler, worker threads and metrics, listening on the same
``host:port`` with ``SO_REUSEPORT``: the kernel spreads new connections over them.

The parent loads no model and serves nothing: it supervises. It reserves the port when
``--port 0`` asks for a free one, starts the workers with multiprocessing's ``spawn``
context (a fresh interpreter each: no fork after torch or CUDA is initialised), tells
them to listen together once all have loaded their models, then logs the same
``streamer serving on http://HOST:PORT`` line as the single-process server.

A worker that dies unexpectedly (a crash, ``kill -9``, the OOM killer) is replaced in its
slot after a pause that doubles with each crash in a row, while the other workers go on
serving their streams; the replacement listens as soon as its models are loaded. A slot
that crashes :attr:`RestartPolicy.crash_limit` times in a row, each time before its
worker served for :attr:`RestartPolicy.healthy_after` seconds (models that cannot load, a
port taken), is a crash loop: the parent gives up, stops the other workers gracefully
and exits 1. SIGTERM or SIGINT to the parent is forwarded to every worker as SIGTERM
(each finishes its streams as usual) and the parent exits 0 once they have; a second one
kills them. A SIGTERM within :data:`REPEAT_WINDOW` of the first stop signal is not a
second one but the same request arriving twice: ``timeout(1)`` and systemd signal the
main process and then its whole process group.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import ctypes
import logging
import math
import multiprocessing
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from streamer.server.options import configure_logging, read_token, settings_from_args
from streamer.server.settings import cpu_count

logger = logging.getLogger(__name__)

#: ``--processes 0`` means one per CPU core, at most this many.
MAX_AUTO_PROCESSES = 16
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds after a stop signal during which a SIGTERM is taken for the same request.
REPEAT_WINDOW = 1.0
_PR_SET_PDEATHSIG = 1


def process_count(requested: int) -> int:
    """``--processes``: N >= 1 as given; 0 for one per CPU core (at most 16)."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"processes must be a whole number >= 0, got {requested!r}")
    return requested or max(1, min(cpu_count(), MAX_AUTO_PROCESSES))


def worker_args(args: argparse.Namespace, count: int) -> argparse.Namespace:
    """The flags of one of ``count`` workers: ``--max-connections`` split evenly (rounded
    up: the kernel, not the server, picks each connection's worker), the CPUs of
    admission shared out, and by default two engine threads per core shared out between
    the workers."""
    share = copy.copy(args)
    share.processes = 1
    share.max_connections = math.ceil(args.max_connections / count)
    if args.workers is None:
        share.workers = max(2, math.ceil(2 * cpu_count() / count))
    if getattr(args, "cpus", None) is None:
        share.cpus = cpu_count() / count
    else:
        share.cpus = args.cpus / count
    return share


def reserve_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """``port``, or for 0 a free port held by a bound (not listening) SO_REUSEPORT
    socket, which the caller keeps while its workers run (so that a worker restarted
    when no other one listens still finds the port free) and then closes."""
    if port != 0:
        return port, None
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    except OSError:
        holder.close()
        raise
    return holder.getsockname()[1], holder


def serve_processes(args: argparse.Namespace, count: int, port: int) -> int:
    """Run ``count`` worker processes on ``args.host:port`` until SIGTERM/SIGINT;
    returns the exit status (0, or 1 when a worker failed)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        logger.error("--processes needs SO_REUSEPORT, which this system lacks")
        return 2
    try:
        port, holder = reserve_port(args.host, port)
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", args.host, port, error)
        return 1
    share_state_secret(args)
    return Supervisor(worker_args(args, count), count, port, holder).run()


def share_state_secret(args: argparse.Namespace) -> None:
    """Without a state secret or a token, each process would seal resume states with a
    random key of its own, and a state from one worker would not resume on another: the
    workers inherit one random secret from the parent's environment instead."""
    if not os.environ.get("STREAMER_STATE_SECRET", "").strip() and not read_token(args):
        os.environ["STREAMER_STATE_SECRET"] = secrets.token_hex(32)


# -- the parent --------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    """When the parent replaces a dead worker, and when it gives up.

    Attributes:
        first_delay: seconds before a slot's first restart; the pause doubles with each
            further crash in a row, so a crash loop does not keep the CPUs busy loading
            models.
        healthy_after: seconds a worker must have been serving for its death to start a
            new count of crashes (a rare crash is restarted forever).
        crash_limit: crashes in a row of one slot at which the parent gives up: the cause
            (models that cannot load, a port taken) will not go away by itself.
    """

    first_delay: float = 1.0
    healthy_after: float = 60.0
    crash_limit: int = 3

    def __post_init__(self) -> None:
        if not self.first_delay >= 0 or not self.healthy_after >= 0:
            raise ValueError("first_delay and healthy_after must be >= 0, got "
                             f"{self.first_delay!r} and {self.healthy_after!r}")
        if self.crash_limit < 1:
            raise ValueError(f"crash_limit must be >= 1, got {self.crash_limit!r}")

    def delay(self, crashes: int) -> float:
        """The pause before restarting a slot after ``crashes`` crashes in a row."""
        return self.first_delay * 2 ** max(0, crashes - 1)


@dataclass
class _Worker:
    """One worker process."""

    index: int
    process: BaseProcess
    channel: Connection  # "loaded" and "listening" come up, "listen" goes down
    channel_open: bool = True
    loaded: bool = False
    told_to_listen: bool = False
    listening_since: float | None = None
    done: bool = False

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


@dataclass
class _Slot:
    """Worker ``index``, across the processes that fill it in turn."""

    index: int
    worker: _Worker | None = None
    restarts: int = 0
    crashes: int = 0  # in a row, each before its worker served ``healthy_after`` s
    restart_at: float | None = None  # time.monotonic() of a pending restart

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.worker.done


class Supervisor:
    """Starts the workers, replaces those that die, forwards stop signals to them and
    waits for them."""

    def __init__(self, args: argparse.Namespace, count: int, port: int,
                 holder: socket.socket | None, policy: RestartPolicy = RestartPolicy(),
                 ) -> None:
        self.args, self.count, self.port, self.holder = args, count, port, holder
        self.policy = policy
        self.slots = [_Slot(index) for index in range(count)]
        self.signals: list[tuple[int, float]] = []  # number, time.monotonic() received
        self.stop_requested_at: float | None = None  # when the first stop signal came
        self.serving = False  # every worker has listened once: the service is up
        self.stopping = False
        self.failed = False

    def run(self) -> int:
        previous = {number: signal.signal(number, self._on_signal) for number in _STOP_SIGNALS}
        try:
            for slot in self.slots:
                if not self.signals:
                    self._start(slot)
            pids = [str(s.worker.process.pid) for s in self.slots if s.worker is not None]
            logger.info("started %d worker processes (pids %s)", len(pids), ", ".join(pids))
            while any(s.running or s.restart_at is not None for s in self.slots):
                self._wait_once()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self._release_port()
        return 1 if self.failed else 0

    def _on_signal(self, number: int, frame: Any) -> None:
        # handled by the loop (logging is not signal-safe), which may see it late: keep
        # when it came
        self.signals.append((number, time.monotonic()))

    def _start(self, slot: _Slot) -> None:
        context = multiprocessing.get_context("spawn")
        channel, child = context.Pipe()
        process = context.Process(
            target=worker_main, name=f"streamer-worker-{slot.index}",
            args=(self.args, slot.index, self.port, child, os.getpid(), slot.restarts))
        process.start()
        child.close()
        slot.worker = _Worker(slot.index, process, channel)

    def _wait_once(self) -> None:
        waiting: dict[Any, _Worker] = {}
        for slot in self.slots:
            if slot.running:
                worker = slot.worker
                waiting[worker.process.sentinel] = worker
                if worker.channel_open:
                    waiting[worker.channel] = worker
        ready = wait(list(waiting), timeout=0.1)
        # Signals first: a worker ending because of a SIGTERM sent to the whole process
        # group (systemd, timeout(1)) is then not taken for a crash and restarted.
        self._forward_signals()
        for item in ready:
            worker = waiting[item]
            if worker.done:
                continue
            if item is worker.channel:
                self._on_message(worker)
            else:
                self._on_exit(worker)
        self._restart_due()

    def _on_message(self, worker: _Worker) -> None:
        try:
            message = worker.channel.recv()
        except (EOFError, OSError):  # it is exiting: its sentinel says how
            worker.channel_open = False
            return
        if message == "loaded":
            worker.loaded = True
            self._tell_to_listen()
        elif message == "listening":
            worker.listening_since = time.monotonic()
            self._on_listening(worker)

    def _tell_to_listen(self) -> None:
        """Let loaded workers listen: at start, once all are loaded (so that the kernel
        balances from the first connection on); later, a replacement right away."""
        loaded = [slot.worker for slot in self.slots if slot.running and slot.worker.loaded]
        if self.stopping or not (self.serving or len(loaded) == self.count):
            return
        for worker in loaded:
            if not worker.told_to_listen:
                worker.told_to_listen = True
                try:
                    worker.channel.send("listen")
                except OSError:  # it just died: its sentinel says how
                    pass

    def _on_listening(self, worker: _Worker) -> None:
        if self.serving:
            logger.info("%s serving again after restart %d", worker.name,
                        self.slots[worker.index].restarts)
        elif all(s.worker is not None and s.worker.listening_since is not None
                 for s in self.slots) and not self.stopping:
            self.serving = True
            logger.info("streamer serving on http://%s:%d (websocket /v1/stream, "
                        "%d worker processes)", self.args.host, self.port, self.count)

    def _on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        worker.done = True
        worker.channel.close()
        worker.channel_open = False
        code = worker.process.exitcode
        if self.stopping:
            # -SIGTERM: ours, before the worker set its handler or after the interpreter
            # reset it while exiting; nothing was being served then.
            if code in (0, -signal.SIGTERM):
                logger.info("%s finished", worker.name)
            else:
                self.failed = True
                logger.error("%s exited with %s", worker.name, _describe(code))
            return
        served = (worker.listening_since is not None and
                  time.monotonic() - worker.listening_since >= self.policy.healthy_after)
        when = "" if worker.listening_since is not None else ", before serving"
        self._crashed(self.slots[worker.index], served,
                      f"exited unexpectedly (pid {worker.process.pid}, {_describe(code)}"
                      f"{when})")

    def _crashed(self, slot: _Slot, served: bool, what: str) -> None:
        """Restart ``slot`` after a pause, or give up on a crash loop."""
        slot.crashes = 1 if served else slot.crashes + 1
        if slot.crashes >= self.policy.crash_limit:
            logger.error("worker %d %s, %d times in a row: giving up, it would only "
                         "crash again (see the errors above); stopping the other workers",
                         slot.index, what, slot.crashes)
            self.failed = True
            self._stop()
            return
        delay = self.policy.delay(slot.crashes)
        slot.restart_at = time.monotonic() + delay
        logger.error("worker %d %s: restarting it in %g s; the other workers go on",
                     slot.index, what, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is None or now < slot.restart_at:
                continue
            slot.restart_at = None
            slot.restarts += 1
            try:
                self._start(slot)
            except OSError as error:  # out of memory or processes: maybe not for long
                self._crashed(slot, False, f"could not be started ({error})")
                continue
            logger.info("restarted worker %d (pid %d, restart %d)", slot.index,
                        slot.worker.process.pid, slot.restarts)

    def _forward_signals(self) -> None:
        while self.signals:
            number, received = self.signals.pop(0)
            name = signal.Signals(number).name
            running = sum(slot.running for slot in self.slots)
            if (number == signal.SIGTERM and self.stop_requested_at is not None
                    and received - self.stop_requested_at < REPEAT_WINDOW):
                logger.info("%s received again at once: the same stop request "
                            "(sent to the process group too), still stopping gracefully",
                            name)
            elif self.stopping:
                logger.warning("%s received again: killing %d worker process(es)", name,
                               running)
                self._send(signal.SIGKILL)
            else:
                logger.info("%s received: stopping %d worker process(es)", name, running)
                self.stop_requested_at = received
                self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
        self._send(signal.SIGTERM)

    def _send(self, number: int) -> None:
        for slot in self.slots:
            if slot.running:
                try:
                    os.kill(slot.worker.process.pid, number)
                except ProcessLookupError:
                    pass

    def _release_port(self) -> None:
        if self.holder is not None:
            self.holder.close()
            self.holder = None


def _describe(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


# -- a worker ----------------------------------------------------------------------------


def worker_main(args: argparse.Namespace, index: int, port: int, channel: Connection,
                parent: int, restarts: int = 0) -> None:
    """Entry point of worker ``index`` (a spawned process; ``restarts``: how many
    processes filled this slot before): load the models, say so, listen on ``port`` with
    SO_REUSEPORT when the parent says so, serve until SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C as SIGTERM
    signal.signal(signal.SIGTERM, _exit_before_serving)
    _stop_with_parent(parent)
    from streamer.cliargs import frontend_from_args
    from streamer.errors import StreamerError

    configure_logging(getattr(args, "log_level", "INFO"),
                      f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s")

    try:
        frontend = frontend_from_args(args)
    except StreamerError as error:
        logger.error("cannot load the models: %s", error)
        raise SystemExit(1) from None
    try:
        channel.send("loaded")
        channel.recv()  # "listen", once every worker is loaded
    except (EOFError, OSError):  # the parent is gone
        raise SystemExit(0) from None
    try:
        asyncio.run(_serve(frontend, settings_from_args(args), args.host, port, index,
                           channel, restarts))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # done: a late one changes nothing
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", args.host, port, error)
        raise SystemExit(1) from None


async def _serve(frontend: Any, settings: Any, host: str, port: int, index: int,
                 channel: Connection, restarts: int) -> None:
    from streamer.server.app import DiarizationServer

    server = DiarizationServer(frontend, settings, worker=index)
    server.metrics.restarts = restarts
    try:
        await server.start(host, port, reuse_port=True)
    except BaseException:
        await server.shutdown()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Unlike one server process, a worker keeps ignoring SIGTERM while it finishes its
    # streams: it may get one from the parent and one sent to the whole process group
    # (systemd, timeout(1)). The parent turns a second stop request into SIGKILL.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    channel.send("listening")
    await stop.wait()
    logger.info("signal received")
    await server.shutdown()


def _exit_before_serving(number: int, frame: Any) -> None:
    raise SystemExit(0)  # nothing to flush yet


def _stop_with_parent(parent: int) -> None:
    """Get SIGTERM when the parent dies (Linux), so that no orphan keeps the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


__all__ = ["MAX_AUTO_PROCESSES", "REPEAT_WINDOW", "RestartPolicy", "Supervisor", "process_count",
           "reserve_port", "serve_processes", "worker_args", "worker_main"]
