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
from streamer.events import Region, SpeakerChange, SpeakerSummary, Turn
from streamer.pipeline import Pipeline, ProgressHook
from streamer.presets import load_frontend
from streamer.results import Annotation, Diarization, Segment
from streamer.tasks.detection import PRESETS as BINARIZATION_PRESETS
from streamer.tasks.detection import Binarization, Scores

__version__ = "0.1.0"


def __getattr__(name: str):
    # The embedding tasks import torch; ``import streamer`` alone stays light.
    if name == "cosine_distance":
        from streamer.tasks.embedding import cosine_distance

        return cosine_distance
    raise AttributeError(f"module 'streamer' has no attribute {name!r}")


__all__ = [
    "Annotation", "AudioFileError", "AudioFormatError", "BINARIZATION_PRESETS",
    "Binarization", "ConfigError", "Diarization", "ModelLoadError", "Pipeline",
    "ProgressHook", "Region", "Scores", "Segment", "SpeakerChange", "SpeakerSummary", "StreamConfig",
    "StreamerError", "StreamingDiarizer", "Turn", "__version__", "cosine_distance",
    "diarize_array", "load_frontend",
]
