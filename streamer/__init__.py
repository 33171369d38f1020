"""streamer: real-time speaker diarization over websockets, and its Python API.

* :class:`Pipeline`: load a preset's models once, diarize files or in-memory waveforms
  (``pipeline("meeting.wav", num_speakers=3)``) into a :class:`Diarization`.
* :class:`StreamingDiarizer`: the streaming engine, a pure, network-free state object
  (``feed(samples) -> events``, ``flush() -> events``, ``reset()``) configured by
  :class:`StreamConfig`, for those who embed it in their own server.

See docs/API.md.
"""
from __future__ import annotations

from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.errors import (AudioFileError, AudioFormatError, ConfigError, ModelLoadError,
                             StreamerError)
from streamer.events import Region, SpeakerSummary, Turn
from streamer.pipeline import Pipeline, ProgressHook
from streamer.presets import load_frontend
from streamer.results import Annotation, Diarization, Segment

__version__ = "0.1.0"

__all__ = [
    "Annotation", "AudioFileError", "AudioFormatError", "ConfigError", "Diarization",
    "ModelLoadError", "Pipeline", "ProgressHook", "Region", "Segment", "SpeakerSummary",
    "StreamConfig", "StreamerError", "StreamingDiarizer", "Turn", "__version__",
    "diarize_array", "load_frontend",
]
