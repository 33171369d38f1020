"""``streamer serve --processes N``: N server processes sharing one port (SO_REUSEPORT).

One process runs out of GIL long before a machine runs out of cores (or a GPU out of
work), so N > 1 starts N *worker processes*, each the single-process server with its
own models, engine threads, micro-batching and metrics, listening on the same
``host:port`` with ``SO_REUSEPORT``: the kernel spreads new connections over them.

The parent loads no model and serves nothing. It reserves the port when ``--port 0``
asks for a free one, starts the workers with multiprocessing's ``spawn`` context (a
fresh interpreter each: no fork after torch or CUDA is initialised), lets them start
listening together once all have loaded their models, then logs the same
``streamer serving on http://HOST:PORT`` line as the single-process server. SIGTERM or
SIGINT to the parent is forwarded to every worker as SIGTERM (each finishes its streams
as usual) and the parent exits 0 once they have; a second one kills them. A worker that
dies unexpectedly is logged, the others are stopped and the parent exits 1 (no restarts).
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
import signal
import socket
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

logger = logging.getLogger(__name__)

#: ``--processes 0`` means one per CPU core, at most this many.
MAX_AUTO_PROCESSES = 16
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


def cpu_count() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def process_count(requested: int) -> int:
    """``--processes``: N >= 1 as given; 0 for one per CPU core (at most 16)."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise ValueError(f"processes must be a whole number >= 0, got {requested!r}")
    return requested or max(1, min(cpu_count(), MAX_AUTO_PROCESSES))


def worker_args(args: argparse.Namespace, count: int) -> argparse.Namespace:
    """The flags of one of ``count`` workers: ``--max-connections`` split evenly (rounded
    up: the kernel, not the server, picks each connection's worker) and, by default, two
    engine threads per core shared out between the workers."""
    share = copy.copy(args)
    share.processes = 1
    share.max_connections = math.ceil(args.max_connections / count)
    if args.workers is None:
        share.workers = max(2, math.ceil(2 * cpu_count() / count))
    return share


def reserve_port(host: str, port: int) -> tuple[int, socket.socket | None]:
    """``port``, or for 0 a free port held by a bound (not listening) SO_REUSEPORT
    socket, which the caller closes once the workers listen on it."""
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
    return Supervisor(worker_args(args, count), count, port, holder).run()


# -- the parent --------------------------------------------------------------------------


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    report: Connection
    reported: bool = False  # its report pipe said something (or closed)
    listening: bool = False
    done: bool = False


class Supervisor:
    """Starts the workers, forwards stop signals to them and waits for them."""

    def __init__(self, args: argparse.Namespace, count: int, port: int,
                 holder: socket.socket | None) -> None:
        self.args, self.count, self.port, self.holder = args, count, port, holder
        self.workers: list[_Worker] = []
        self.barrier: Any = None
        self.signals: list[int] = []
        self.stopping = False
        self.failed = False

    def run(self) -> int:
        previous = {number: signal.signal(number, self._on_signal) for number in _STOP_SIGNALS}
        try:
            self._start_workers()
            while not all(worker.done for worker in self.workers):
                self._wait_once()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            self._release_port()
        return 1 if self.failed else 0

    def _on_signal(self, number: int, frame: Any) -> None:
        self.signals.append(number)  # handled by the loop: logging is not signal-safe

    def _start_workers(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.barrier = context.Barrier(self.count)  # kept: the workers unpickle it later
        for index in range(self.count):
            if self.signals:
                break
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main, name=f"streamer-worker-{index}",
                args=(self.args, index, self.port, self.barrier, writer,
                      os.getpid()))
            process.start()
            writer.close()
            self.workers.append(_Worker(index, process, reader))
        logger.info("started %d worker processes (pids %s)", len(self.workers),
                    ", ".join(str(w.process.pid) for w in self.workers))

    def _wait_once(self) -> None:
        waiting: dict[Any, _Worker] = {}
        for worker in self.workers:
            if not worker.done:
                waiting[worker.process.sentinel] = worker
                if not worker.reported:
                    waiting[worker.report] = worker
        for ready in wait(list(waiting), timeout=0.1):
            worker = waiting[ready]
            if ready is worker.report:
                self._on_report(worker)
            else:
                self._on_exit(worker)
        self._forward_signals()

    def _on_report(self, worker: _Worker) -> None:
        worker.reported = True
        try:
            worker.report.recv()
        except EOFError:  # it died before listening: its sentinel says how
            return
        worker.listening = True
        everyone = len(self.workers) == self.count and all(w.listening for w in self.workers)
        if everyone and not self.stopping:
            self._release_port()
            logger.info("streamer serving on http://%s:%d (websocket /v1/stream, "
                        "%d worker processes)", self.args.host, self.port, self.count)

    def _on_exit(self, worker: _Worker) -> None:
        worker.process.join()
        worker.done = True
        code = worker.process.exitcode
        name = f"worker {worker.index} (pid {worker.process.pid})"
        if code == 0 and self.stopping:
            logger.info("%s finished", name)
            return
        self.failed = True
        if self.stopping:
            logger.error("%s exited with %s", name, _describe(code))
            return
        logger.error("%s exited unexpectedly with %s: stopping the others", name,
                     _describe(code))
        self._stop()

    def _forward_signals(self) -> None:
        while self.signals:
            name = signal.Signals(self.signals.pop(0)).name
            running = sum(not w.done for w in self.workers)
            if self.stopping:
                logger.warning("%s received again: killing %d worker process(es)", name,
                               running)
                self._send(signal.SIGKILL)
            else:
                logger.info("%s received: stopping %d worker process(es)", name, running)
                self._stop()

    def _stop(self) -> None:
        self.stopping = True
        self._send(signal.SIGTERM)

    def _send(self, number: int) -> None:
        for worker in self.workers:
            if not worker.done:
                try:
                    os.kill(worker.process.pid, number)
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


def worker_main(args: argparse.Namespace, index: int, port: int, barrier: Any,
                report: Connection, parent: int) -> None:
    """Entry point of worker ``index`` (a spawned process): load the models, wait for the
    other workers, serve on ``port`` with SO_REUSEPORT until SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C as SIGTERM
    signal.signal(signal.SIGTERM, _exit_before_serving)
    _stop_with_parent(parent)
    from streamer.cliargs import frontend_from_args
    from streamer.errors import StreamerError
    from streamer.server.cli import configure_logging, settings_from_args

    configure_logging(getattr(args, "log_level", "INFO"),
                      f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s")

    try:
        frontend = frontend_from_args(args)
    except StreamerError as error:
        logger.error("cannot load the models: %s", error)
        raise SystemExit(1) from None
    barrier.wait()  # listen together: the kernel balances from the first connection on
    try:
        asyncio.run(_serve(frontend, settings_from_args(args), args.host, port, index,
                           report))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # done: a late one changes nothing
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", args.host, port, error)
        raise SystemExit(1) from None


async def _serve(frontend: Any, settings: Any, host: str, port: int, index: int,
                 report: Connection) -> None:
    from streamer.server.app import DiarizationServer

    server = DiarizationServer(frontend, settings, worker=index)
    try:
        await server.start(host, port, reuse_port=True)
    except BaseException:
        await server.shutdown()
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Unlike one server process, a worker keeps ignoring SIGTERM while it finishes its
    # streams: it may get one from the parent and one sent to the whole process group
    # (systemd, timeout(1)). The parent turns a second signal into SIGKILL.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    report.send(os.getpid())
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


__all__ = ["MAX_AUTO_PROCESSES", "Supervisor", "process_count", "reserve_port",
           "serve_processes", "worker_args", "worker_main"]
