"""Validated configuration of one diarization stream.

:class:`StreamConfig` is a dataclass checked in ``__post_init__``: a bad value raises
:class:`streamer.errors.ConfigError` (a ``ValueError``) that names the field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from streamer.errors import ConfigError
from streamer.events import OUTPUTS
from streamer.voiceprints import KnownSpeaker, parse_known_speakers

#: Default delay between the audio and the final decision about it, in seconds.
DEFAULT_LATENCY = 2.0
#: How many times file mode streams a whole file by default, and at most (see
#: :func:`streamer.engine.run_passes`).
FILE_PASSES = 2
MAX_PASSES = 4


def _check_latency(latency: float, step: float, duration: float) -> None:
    """A final decision cannot wait for audio the buffer no longer holds."""
    if latency > duration:
        raise ConfigError(f"latency ({latency}) must be between step ({step}) "
                          f"and duration ({duration})")


def _number(name: str, value: Any, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high}, got {value}")
    return value


def _count(name: str, value: Any, low: int = 1, high: int = 1000) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _outputs(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"outputs must be a list of names among {', '.join(OUTPUTS)}, "
                          f"got {value!r}")
    unknown = [name for name in value if name not in OUTPUTS]
    if unknown:
        raise ConfigError(f"unknown output(s) {', '.join(map(repr, unknown))}: choose among "
                          f"{', '.join(OUTPUTS)}")
    return tuple(name for name in OUTPUTS if name in value)


@dataclass
class StreamConfig:
    """Settings of one stream.

    Attributes:
        duration: Length of the rolling buffer the models look at, in seconds. ``None``
            takes the segmentation model's own chunk duration (10 s for the default models).
        step: How far the buffer advances between two model runs, in seconds.
        latency: Delay between a moment of audio and the final decision about it, in
            seconds, between ``step`` and ``duration``. Larger is more accurate (each frame
            is seen by more buffers), smaller is faster. Interim turns come after ``step``
            whatever the latency. ``None`` means ``DEFAULT_LATENCY`` (2 s), capped to
            ``duration``.
        tau_active: A local speaker of a buffer takes part in speaker matching only if its
            activation peaks at or above this value.
        rho_update: A local speaker updates (or creates) a global speaker centroid only if
            its speech covers at least this fraction of the buffer duration.
        delta_new: Cosine distance to the nearest centroid above which a local speaker
            becomes a new global speaker. ``None`` takes the model's tuned value.
        max_speakers: Upper bound on the number of global speakers of the stream.
        min_speakers: Lower bound: below it, a clearly active local speaker that lies
            farther from its nearest speaker than that speaker's own matches usually do
            becomes a new speaker (see :class:`streamer.clustering.CentroidMemory`).
        pitch_weight, pitch_margin: How far apart voices' pitch sets them, on top of the
            embeddings' cosine distance (see :mod:`streamer.pitch`): ``pitch_weight``
            per unit of pitch difference (in units of the two voices' own spreads)
            beyond ``pitch_margin`` units. ``pitch_weight=0`` leaves pitch out; ``None``
            takes the model's value (1 for the embedded preset, 0.5 for the accurate
            preset's CAM++, 0 for other embedding models).
        num_speakers: Known number of speakers; sets both bounds.
        min_duration_on: Turns shorter than this are dropped (blips), in seconds.
        min_duration_off: Gaps shorter than this between two stretches of the same speaker
            are bridged, in seconds.
        speech_threshold: Activation at or above which a frame counts as speech. ``None``
            takes the model's tuned value.
        gamma, beta: Shape of the overlap-aware embedding weights
            (``activation**gamma * softmax(beta * activations)**gamma``).
        outputs: Opt-in outputs next to the exclusive turns, any of ``"speech"`` (speech
            regions), ``"overlap"`` (overlapped speech regions), ``"regular"`` (the
            overlap-aware diarization: turns that may overlap) and ``"speaker_changes"``
            (``speaker_start``/``speaker_end`` before turns are final). ``overlap`` and
            ``regular`` need a model that detects overlapped speech (pyannote presets).
        known_speakers: Voiceprints of known voices, ``[{"name", "voiceprint"}]`` (see
            :mod:`streamer.voiceprints`): a speaker that matches one is named in its turns
            (``identity``, ``similarity``). They must come from this stream's models.
        identity_threshold: Cosine similarity between a speaker's centroid and a voiceprint
            from which the speaker is identified. ``None`` takes the model's calibrated
            value.
    """

    duration: float | None = None
    step: float = 0.5
    latency: float | None = None
    tau_active: float = 0.5
    rho_update: float = 0.05
    delta_new: float | None = None
    max_speakers: int = 20
    min_speakers: int = 1
    num_speakers: int | None = None
    pitch_weight: float | None = None
    pitch_margin: float = 1.0
    min_duration_on: float = 0.0
    min_duration_off: float = 0.3
    speech_threshold: float | None = None
    gamma: float = 3.0
    beta: float = 10.0
    outputs: tuple[str, ...] = ()
    known_speakers: tuple[KnownSpeaker, ...] = ()
    identity_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.duration is not None:
            self.duration = _number("duration", self.duration, 1.0, 60.0)
        self.step = _number("step", self.step, 0.05, 10.0)
        if self.duration is not None and self.step > self.duration:
            raise ConfigError(f"step ({self.step}) must not exceed duration ({self.duration})")
        if self.latency is not None:
            self.latency = _number("latency", self.latency, self.step, 60.0)
            if self.duration is not None:
                _check_latency(self.latency, self.step, self.duration)
        self.tau_active = _number("tau_active", self.tau_active, 0.0, 1.0)
        self.rho_update = _number("rho_update", self.rho_update, 0.0, 1.0)
        if self.delta_new is not None:
            self.delta_new = _number("delta_new", self.delta_new, 0.0, 2.0)
        self.max_speakers = _count("max_speakers", self.max_speakers, 1, 100)
        self.min_speakers = _count("min_speakers", self.min_speakers, 1, 100)
        if self.num_speakers is not None:
            self.num_speakers = _count("num_speakers", self.num_speakers, 1, 100)
            self.min_speakers = self.max_speakers = self.num_speakers
        if self.min_speakers > self.max_speakers:
            raise ConfigError(
                f"min_speakers ({self.min_speakers}) must not exceed "
                f"max_speakers ({self.max_speakers})"
            )
        if self.pitch_weight is not None:
            self.pitch_weight = _number("pitch_weight", self.pitch_weight, 0.0, 10.0)
        self.pitch_margin = _number("pitch_margin", self.pitch_margin, 0.0, 10.0)
        self.min_duration_on = _number("min_duration_on", self.min_duration_on, 0.0, 10.0)
        self.min_duration_off = _number("min_duration_off", self.min_duration_off, 0.0, 10.0)
        if self.speech_threshold is not None:
            self.speech_threshold = _number("speech_threshold", self.speech_threshold, 0.0, 1.0,
                                            low_open=True)
        self.gamma = _number("gamma", self.gamma, 0.0, 10.0)
        self.beta = _number("beta", self.beta, 0.0, 100.0)
        self.outputs = _outputs(self.outputs)
        self.known_speakers = parse_known_speakers(self.known_speakers)
        if self.identity_threshold is not None:
            self.identity_threshold = _number("identity_threshold", self.identity_threshold,
                                              -1.0, 1.0)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "StreamConfig":
        """Build a config from a mapping; unknown keys raise :class:`ConfigError`."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ConfigError(f"config must be an object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(map(str, unknown))}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["outputs"] = list(self.outputs)
        values["known_speakers"] = [{"name": s.name, "voiceprint": s.voiceprint}
                                    for s in self.known_speakers]
        return values

    def to_public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` as echoed to clients and written in results: known speakers by
        name only (their voiceprints stay with the caller)."""
        values = self.to_dict()
        values["known_speakers"] = [s.name for s in self.known_speakers]
        return values

    def resolve(self, chunk_duration: float, delta_new: float, speech_threshold: float,
                identity_threshold: float = 0.0, pitch_weight: float = 0.0,
                file_mode: bool = False) -> "StreamConfig":
        """Fill the model-dependent defaults and check the fields against each other.
        ``file_mode``: the whole signal is at hand, so an unset ``latency`` is the
        buffer's ``duration`` (see :class:`streamer.engine.StreamingDiarizer`)."""
        duration = self.duration if self.duration is not None else chunk_duration
        if self.latency is not None:
            latency = self.latency
        else:
            latency = duration if file_mode else min(DEFAULT_LATENCY, duration)
        _check_latency(latency, self.step, duration)
        values = self.to_dict()
        values.update(
            duration=duration,
            latency=max(latency, self.step),
            delta_new=self.delta_new if self.delta_new is not None else delta_new,
            speech_threshold=(self.speech_threshold if self.speech_threshold is not None
                              else speech_threshold),
            identity_threshold=(self.identity_threshold if self.identity_threshold is not None
                                else identity_threshold),
            pitch_weight=self.pitch_weight if self.pitch_weight is not None else pitch_weight,
        )
        return StreamConfig(**values)


__all__ = ["StreamConfig", "DEFAULT_LATENCY", "FILE_PASSES", "MAX_PASSES"]
