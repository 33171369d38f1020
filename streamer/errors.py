"""The project's exception tree.

Every error the library raises on purpose derives from :class:`StreamerError`. Each class
carries a short machine-readable ``code`` (sent to websocket clients; the server maps it
to a close code, :func:`streamer.server.protocol.close_code`).
"""
from __future__ import annotations


class StreamerError(Exception):
    """Root of all errors raised by streamer on purpose."""

    code = "internal_error"


class ConfigError(StreamerError, ValueError):
    """A configuration value is out of range or of the wrong type."""

    code = "bad_config"


class AudioFormatError(StreamerError, ValueError):
    """Audio that cannot be decoded: bad encoding, rate, channel count, NaN, empty file."""

    code = "bad_audio"


class AudioFileError(AudioFormatError):
    """An audio file that is missing, unreadable, empty or needs a decoder that is absent."""

    code = "bad_audio_file"


class ProtocolError(StreamerError):
    """A client broke the wire protocol (message order, unknown message, bad JSON)."""

    code = "protocol_error"


class ModelLoadError(StreamerError):
    """Model weights that cannot be found, fetched or loaded."""

    code = "model_load_error"
