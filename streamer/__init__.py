"""streamer: real-time speaker diarization over websockets.

The streaming engine (:class:`streamer.engine.StreamingDiarizer`) is a pure, network-free
state object: ``feed(samples) -> events``, ``flush() -> events``, ``reset()``.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
