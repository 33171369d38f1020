"""Events produced by the engine and sent to clients."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Turn:
    """One exclusive speaker turn, in seconds from stream start.

    ``final=False`` is an interim view of the open turn (it may still grow, shrink or be
    dropped); the next interim or final event supersedes it. ``final=True`` closes the turn
    for good: its label and times never change afterwards. ``id`` numbers turns in order;
    an interim turn carries the id its final version will have.
    """

    id: int
    speaker: str
    start: float
    end: float
    final: bool
    #: Name of the known speaker the speaker matches, with the cosine similarity.
    identity: str | None = None
    similarity: float | None = None

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "turn",
            "id": self.id,
            "speaker": self.speaker,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "final": self.final,
        }
        return _with_identity(event, self.identity, self.similarity)


def _with_identity(event: dict[str, Any], identity: str | None,
                   similarity: float | None) -> dict[str, Any]:
    """``event`` with ``identity`` and ``similarity`` when the speaker is identified."""
    if identity is not None:
        event["identity"] = identity
        event["similarity"] = round(float(similarity or 0.0), 4)
    return event


#: Opt-in outputs of a stream next to its exclusive turns (``StreamConfig.outputs``).
OUTPUTS = ("speech", "overlap", "regular", "speaker_changes")
#: Outputs that need a segmentation model that detects overlapped speech.
OVERLAP_OUTPUTS = ("overlap", "regular")


@dataclass(frozen=True)
class Region:
    """A final region of one opt-in output, in seconds from stream start.

    ``kind`` is ``"speech"`` (someone speaks), ``"overlap"`` (two or more speakers at
    once) or ``"regular"`` (one speaker's turn in the overlap-aware diarization: regular
    turns of different speakers may overlap; ``speaker`` names the speaker). Regions are
    sent once, final, when they close; ``id`` numbers the regions of one kind in order.
    """

    kind: str
    id: int
    start: float
    end: float
    speaker: str | None = None
    final: bool = True

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": "regular_turn" if self.kind == "regular" else self.kind,
                                 "id": self.id}
        if self.speaker is not None:
            event["speaker"] = self.speaker
        event.update(start=round(self.start, 3), end=round(self.end, 3), final=True)
        return event


@dataclass(frozen=True)
class SpeakerChange:
    """A speaker starts or stops talking (opt-in output ``speaker_changes``).

    ``speaker_start`` comes with the first interim view of a turn, so within about one
    step of the speech; ``speaker_end`` with the turn's final version (``latency``
    after its end), or as soon as the interim view drops or relabels the turn
    (``retracted``: the start was a false alarm or went to another speaker).
    ``turn`` is the id of the turn event it belongs to; ``time`` is the turn's start
    (``speaker_start``) or end (``speaker_end``), in seconds from stream start.
    """

    kind: str  # "speaker_start" or "speaker_end"
    turn: int
    speaker: str
    time: float
    retracted: bool = False
    identity: str | None = None
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": self.kind, "turn": self.turn,
                                 "speaker": self.speaker, "time": round(self.time, 3)}
        if self.kind == "speaker_end":
            event["retracted"] = self.retracted
        return _with_identity(event, self.identity, self.similarity)


@dataclass
class SpeakerSummary:
    """A global speaker of a stream: its label, total speech in final turns, and centroid
    (and its pitch median and spread in semitones, where the engine tracks pitch: what a
    voiceprint keeps, not part of the ``end`` event)."""

    label: str
    speech: float
    embedding: list[float] = field(default_factory=list)
    identity: str | None = None
    similarity: float | None = None
    pitch: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        summary = {
            "label": self.label,
            "speech": round(self.speech, 3),
            "embedding": [round(float(x), 6) for x in self.embedding],
        }
        return _with_identity(summary, self.identity, self.similarity)


def speaker_label(index: int) -> str:
    return f"SPEAKER_{index:02d}"
