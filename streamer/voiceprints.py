"""Voiceprints: enrolment of one voice, and identification of a stream's speakers.

A voiceprint is the embedding model's vector of one voice, with the identity of the model
that made it (preset, embedding source, dimension) and a format version:

    {"type": "voiceprint", "version": 1, "model": {...}, "vector": [...], "speech": 12.3,
     "pitch": {"median": -24.1, "spread": 1.6}}

``pitch`` (optional: absent where the engine tracks no pitch, or the voice had too few
voiced frames) is the voice's F0 median and spread in semitones from 440 Hz, as the
engine's speaker memory holds it (:mod:`streamer.pitch`). Two voices can match one
embedding almost equally well while speaking far apart in pitch, so identification counts
pitch as tracking does: a speaker whose pitch is far from a voiceprint's, in units of both
spreads, scores that much lower against it.

:func:`streamer.enrollment.enroll` makes one from at most ``MAX_ENROLL_SECONDS`` of audio
of one speaker: the audio is diarized like a stream, and refused when it holds too little
speech or a second voice. A stream given known speakers (``StreamConfig.known_speakers``)
names each global speaker whose centroid matches a voiceprint: speakers and voiceprints
are paired one to one (Hungarian method) by their score (cosine similarity, less the pitch
penalty), and a pair counts only at or above the identity threshold, so an unknown voice
keeps its anonymous label.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from streamer.errors import ConfigError, StreamerError
from streamer.linalg import min_cost_assignment
from streamer.pitch import pitch_penalty

#: Format version of a voiceprint document.
VOICEPRINT_VERSION = 1
#: Longest audio an enrolment takes, in seconds.
MAX_ENROLL_SECONDS = 30.0
#: Least speech an enrolment needs, in seconds (a shorter voiceprint is unreliable).
MIN_ENROLL_SPEECH = 3.0
#: A second speaker with at least this much speech (seconds) makes an enrolment ambiguous.
SECOND_SPEAKER_SPEECH = 1.0
#: Most known speakers one stream takes.
MAX_KNOWN_SPEAKERS = 100
#: Pitch medians a voiceprint may hold, semitones from 440 Hz (about 30 Hz to 1.4 kHz).
PITCH_RANGE = (-47.0, 20.0)


class VoiceprintError(StreamerError, ValueError):
    """Audio that cannot make a voiceprint (too long, too little speech, several voices)."""

    code = "enrolment_refused"


@dataclass(frozen=True)
class KnownSpeaker:
    """A named voiceprint given to a stream."""

    name: str
    voiceprint: dict[str, Any]

    @property
    def vector(self) -> np.ndarray:
        return np.asarray(self.voiceprint["vector"], np.float64)

    @property
    def pitch(self) -> tuple[float, float]:
        """The voice's pitch median and spread in semitones (NaN: not in the print)."""
        pitch = self.voiceprint.get("pitch")
        if pitch is None:
            return math.nan, math.nan
        return float(pitch["median"]), float(pitch["spread"])


def voiceprint_document(model: Mapping[str, Any], vector: np.ndarray, speech: float,
                        pitch: tuple[float, float] | None = None) -> dict[str, Any]:
    """A voiceprint; ``pitch`` (median, spread in semitones) is left out when unknown."""
    unit = np.asarray(vector, np.float64)
    unit = unit / max(float(np.linalg.norm(unit)), 1e-12)
    document = {"type": "voiceprint", "version": VOICEPRINT_VERSION, "model": dict(model),
                "vector": [round(float(x), 7) for x in unit], "speech": round(float(speech), 3)}
    if pitch is not None and all(math.isfinite(x) for x in pitch):
        document["pitch"] = {"median": round(float(pitch[0]), 3),
                             "spread": round(float(pitch[1]), 3)}
    return document


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite JSON number (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_pitch(pitch: Any, what: str) -> None:
    if (not isinstance(pitch, Mapping) or set(pitch) != {"median", "spread"}
            or not _finite(pitch["median"])
            or not PITCH_RANGE[0] <= pitch["median"] <= PITCH_RANGE[1]
            or not _finite(pitch["spread"]) or not 1e-3 <= pitch["spread"] <= 24.0):
        raise ConfigError(f"{what} pitch must be {{\"median\", \"spread\"}}: a median of "
                          f"{PITCH_RANGE[0]:g} to {PITCH_RANGE[1]:g} semitones from 440 Hz and "
                          "a spread above 0 and at most 24 semitones")


def check_voiceprint(document: Any, what: str = "voiceprint") -> dict[str, Any]:
    """``document`` when it is a well-formed voiceprint; :class:`ConfigError` otherwise."""
    if not isinstance(document, Mapping) or document.get("type") != "voiceprint":
        raise ConfigError(f"{what} is not a voiceprint document (type 'voiceprint')")
    if document.get("version") != VOICEPRINT_VERSION:
        raise ConfigError(f"{what} has format version {document.get('version')!r}; this "
                          f"server reads version {VOICEPRINT_VERSION}")
    model, vector = document.get("model"), document.get("vector")
    if not isinstance(model, Mapping) or not isinstance(model.get("dimension"), int):
        raise ConfigError(f"{what} does not name the model that made it")
    if (not isinstance(vector, list) or len(vector) != model["dimension"]
            or not all(_finite(x) for x in vector)
            or not any(vector)):
        raise ConfigError(f"{what} vector must be {model.get('dimension')} finite numbers, "
                          "not all zero")
    if "pitch" in document:
        _check_pitch(document["pitch"], what)
    return dict(document)


def check_name(name: Any, what: str = "a known speaker's name") -> str:
    """``name`` when it is a non-empty string of at most 100 characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ConfigError(f"{what} must be a non-empty string of at most 100 characters")
    return name


def parse_known_speakers(value: Any) -> tuple[KnownSpeaker, ...]:
    """``[{"name", "voiceprint"}, ...]`` (or :class:`KnownSpeaker` objects) as a tuple;
    :class:`ConfigError` names what is wrong."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError("known_speakers must be a list of {\"name\", \"voiceprint\"} objects")
    if len(value) > MAX_KNOWN_SPEAKERS:
        raise ConfigError(f"known_speakers holds {len(value)} entries; at most "
                          f"{MAX_KNOWN_SPEAKERS}")
    speakers: list[KnownSpeaker] = []
    for index, entry in enumerate(value):
        if isinstance(entry, KnownSpeaker):
            entry = {"name": entry.name, "voiceprint": entry.voiceprint}
        if not isinstance(entry, Mapping) or set(entry) != {"name", "voiceprint"}:
            raise ConfigError(f"known_speakers[{index}] must be an object with exactly "
                              "\"name\" and \"voiceprint\"")
        name = check_name(entry["name"], f"known_speakers[{index}].name")
        if any(s.name == name for s in speakers):
            raise ConfigError(f"known speaker {name!r} is given twice")
        document = check_voiceprint(entry["voiceprint"], f"the voiceprint of {name!r}")
        speakers.append(KnownSpeaker(name, document))
    return tuple(speakers)


def check_models(speakers: Sequence[KnownSpeaker], identity: Mapping[str, Any]) -> None:
    """Refuse voiceprints made by another model than ``identity`` (their vectors are not
    comparable with this stream's embeddings)."""
    for speaker in speakers:
        if speaker.voiceprint["model"] != dict(identity):
            raise ConfigError(
                f"the voiceprint of {speaker.name!r} was made by another model "
                f"({speaker.voiceprint['model']!r}), not this stream's {dict(identity)!r}: "
                "enroll the voice again with this server's models")


class Identifier:
    """Names global speakers after the known speakers whose voiceprints they match.

    A pair's score is the cosine similarity of the speaker's centroid and the voiceprint,
    less the pitch penalty of :func:`streamer.pitch.pitch_penalty` (``pitch_weight`` per
    unit beyond ``pitch_margin``) where both pitches are known: the cost tracking adds
    to the distance of two voices."""

    def __init__(self, speakers: Sequence[KnownSpeaker], threshold: float,
                 pitch_weight: float = 0.0, pitch_margin: float = 1.0):
        self.names = [s.name for s in speakers]
        self.threshold = threshold
        self.pitch_weight = pitch_weight
        self.pitch_margin = pitch_margin
        vectors = np.stack([s.vector for s in speakers]) if speakers else np.zeros((0, 1))
        self._prints = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True),
                                            1e-12)
        self._pitch = np.array([s.pitch for s in speakers], np.float64).reshape(-1, 2)

    def match(self, centroids: np.ndarray, pitches: np.ndarray | None = None
              ) -> dict[int, tuple[str, float]]:
        """Speaker index -> (name, score) for each speaker that matches a voiceprint: one
        to one, greatest total score, each pair at or above the threshold. ``pitches``
        ``(speakers, 2)``: each speaker's pitch median and spread (NaN: unknown)."""
        if not self.names or len(centroids) == 0:
            return {}
        centroids = np.asarray(centroids, np.float64)
        centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True),
                                           1e-12)
        similarity = centroids @ self._prints.T
        if pitches is not None:
            similarity = similarity - pitch_penalty(np.asarray(pitches, np.float64),
                                                    self._pitch, self.pitch_weight,
                                                    self.pitch_margin)
        # Pairs below the threshold may not be made, so they must not take part either.
        cost = np.where(similarity >= self.threshold, -similarity, 1e6)
        rows, columns = min_cost_assignment(cost)
        return {int(r): (self.names[c], float(similarity[r, c]))
                for r, c in zip(rows, columns) if similarity[r, c] >= self.threshold}


def read_voiceprints(path: str) -> list[dict[str, Any]]:
    """The ``[{"name", "voiceprint"}]`` entries of a voiceprint file (written by
    ``streamer enroll``), checked; :class:`ConfigError` for a file that is not one."""
    import json

    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read voiceprints {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise ConfigError(f"{path} is not JSON: {error}") from None
    entries = document.get("voiceprints") if isinstance(document, Mapping) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path} is not a voiceprint file (an object with a "
                          "\"voiceprints\" list)")
    return [{"name": s.name, "voiceprint": s.voiceprint}
            for s in parse_known_speakers(entries)]


def add_voiceprint(path: str, name: str, voiceprint: dict[str, Any]) -> int:
    """Add ``name``'s voiceprint to the file at ``path`` (made if missing; an entry of the
    same name is replaced). Returns the number of voiceprints in the file."""
    import json
    import os

    entries = read_voiceprints(path) if os.path.exists(path) else []
    entries = [e for e in entries if e["name"] != name] + [{"name": name,
                                                            "voiceprint": voiceprint}]
    parse_known_speakers(entries)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"voiceprints": entries}, handle, indent=1)
        handle.write("\n")
    os.replace(temporary, path)
    return len(entries)


__all__ = ["VOICEPRINT_VERSION", "MAX_ENROLL_SECONDS", "MIN_ENROLL_SPEECH",
           "KnownSpeaker", "VoiceprintError", "Identifier", "check_voiceprint",
           "parse_known_speakers", "check_models", "voiceprint_document", "read_voiceprints",
           "add_voiceprint", "check_name"]
