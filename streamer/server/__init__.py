"""The websocket server of streamer: many concurrent streams, one engine state each.

* :class:`~streamer.server.app.DiarizationServer` serves ``/v1/stream`` plus ``/healthz``,
  ``/metrics`` and the web page, for one loaded frontend shared by every stream.
* :class:`~streamer.server.settings.ServerSettings` holds every limit.
* :mod:`streamer.server.cli` is ``streamer serve``.

The wire protocol is documented in ``docs/PROTOCOL.md``.
"""
from __future__ import annotations

from streamer.server.app import DiarizationServer
from streamer.server.settings import ServerSettings

__all__ = ["DiarizationServer", "ServerSettings"]
