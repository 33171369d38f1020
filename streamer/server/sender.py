"""Per-connection outgoing event queue, so that a client that does not read its events
only ever blocks itself."""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Mapping

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streamer.server.protocol import SlowClient, encode


class EventSender:
    """Writes JSON events to one connection from a task of its own.

    ``send`` only queues (bounded by ``queue_size``); when the queue stays full for
    ``timeout`` seconds the client is too slow and ``send`` raises :class:`SlowClient`.
    Once the connection is closed ``send`` raises its ``ConnectionClosed``.
    """

    def __init__(self, connection: ServerConnection, *, queue_size: int, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self._queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self._error: ConnectionClosed | None = None
        self._unwritten: list[str] = []
        self._task = asyncio.create_task(self._run())

    async def send(self, message: Mapping[str, Any]) -> None:
        if self._error is not None:
            raise self._error
        text = encode(message)
        try:
            self._queue.put_nowait(text)
            return
        except asyncio.QueueFull:
            pass
        try:
            async with asyncio.timeout(self.timeout):
                await self._queue.put(text)
        except TimeoutError:
            if self._error is not None:
                raise self._error from None
            raise SlowClient(f"the client did not read its events for {self.timeout:g} s"
                             ) from None

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued event is written; False if that took over ``timeout``."""
        if self._task.done():
            return self._queue.empty()
        joined = asyncio.create_task(self._queue.join())
        try:
            await asyncio.wait([joined, self._task], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            return joined.done() and self._error is None
        finally:
            joined.cancel()

    async def abort(self) -> None:
        """Stop writing (what is still queued is dropped)."""
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            text = await self._queue.get()
            try:
                await self.connection.send(text)
            except ConnectionClosed as error:
                self._error = error
                self._unwritten.append(text)
                return
            finally:
                self._queue.task_done()

    def unwritten(self) -> list[dict[str, Any]]:
        """The events not written when the connection closed (the one being written, then
        those still queued), once it has."""
        texts = list(self._unwritten)
        while not self._queue.empty():
            texts.append(self._queue.get_nowait())
            self._queue.task_done()
        return [json.loads(text) for text in texts]


__all__ = ["EventSender"]
