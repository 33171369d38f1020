"""How a stream ends, decided without I/O.

When a stream's input stops (the client sent ``stop``, the server drains, or an error
ended it), :func:`ending` says what the session must do, in this order: process every
accepted sample and send the last turns (``drain``); send ``end`` with the sealed state
(``end``, asking the client to resume elsewhere when ``reconnect``), or the ``error``
message; then close with ``code`` and ``reason``. ``outcome`` is what the log says.
"""
from __future__ import annotations

from dataclasses import dataclass

from streamer.errors import StreamerError
from streamer.server import protocol
from streamer.server.protocol import SlowClient


@dataclass(frozen=True)
class Ending:
    """The steps that end one stream (see the module)."""

    drain: bool
    end: bool
    reconnect: bool
    #: The error that ends the stream (``None``: a normal end).
    error: StreamerError | None
    #: Whether the error message can still be sent: not to a client that stopped
    #: reading, whose queued events are dropped instead.
    send_error: bool
    code: int
    reason: str
    outcome: str


def ending(cause: StreamerError | None, *, started: bool, going_away: bool = False
           ) -> Ending:
    """How to end a stream whose input stopped because of ``cause`` (``None``: ``stop``,
    or a drain when ``going_away``); ``started``: whether it has an engine whose accepted
    audio must still be processed."""
    if cause is None:
        return Ending(drain=started, end=started, reconnect=going_away, error=None,
                      send_error=False,
                      code=protocol.GOING_AWAY if going_away else protocol.NORMAL_CLOSURE,
                      reason="server shutting down" if going_away else "",
                      outcome="shutdown" if going_away else "stop")
    slow = isinstance(cause, SlowClient)
    return Ending(drain=started and not slow, end=False, reconnect=False, error=cause,
                  send_error=not slow, code=protocol.close_code(cause), reason=cause.code,
                  outcome=cause.code)


__all__ = ["Ending", "ending"]
