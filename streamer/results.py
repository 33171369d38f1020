"""The result of diarizing a whole signal, and its RTTM and JSON forms.

:class:`Diarization` holds the exclusive diarization (one speaker at a time: the turns a
stream sends), the regular one (overlap-aware, where the segmentation model detects
overlapped speech), the overlapped speech regions, and one embedding per speaker. The
JSON shapes are those of file mode (``streamer diarize --json``): ``"streamer"`` and
``"meronym"`` (the hosted pyannote-based services' shape).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from streamer.events import Region, Turn
from streamer.rttm import rttm_line

#: Shapes of the JSON result (``Diarization.to_json``, ``streamer diarize --json-format``).
JSON_FORMATS = ("streamer", "meronym")


@dataclass(frozen=True)
class Segment:
    """A time span in seconds from the start of the audio."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


class Annotation(Sequence[tuple[Segment, str]]):
    """Speaker turns in time order; iterating yields ``(segment, speaker)`` pairs."""

    def __init__(self, tracks: Sequence[tuple[Segment, str]] = ()):
        self._tracks = sorted(tracks, key=lambda track: (track[0].start, track[0].end,
                                                         track[1]))

    def __getitem__(self, index):  # type: ignore[override]
        return self._tracks[index]

    def __len__(self) -> int:
        return len(self._tracks)

    def __iter__(self) -> Iterator[tuple[Segment, str]]:
        return iter(self._tracks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Annotation) and self._tracks == other._tracks

    def __repr__(self) -> str:
        return f"Annotation({len(self)} turns, speakers {self.labels()})"

    def labels(self) -> list[str]:
        """The speakers, sorted."""
        return sorted({speaker for _, speaker in self._tracks})

    def speech(self) -> dict[str, float]:
        """Seconds of speech per speaker."""
        totals: dict[str, float] = {}
        for segment, speaker in self._tracks:
            totals[speaker] = totals.get(speaker, 0.0) + segment.duration
        return totals

    def to_rttm(self, uri: str = "audio") -> str:
        return "".join(rttm_line(uri, s.start, s.end, speaker) for s, speaker in self)

    def to_list(self) -> list[dict[str, Any]]:
        return [{"speaker": speaker, "start": round(s.start, 3), "end": round(s.end, 3)}
                for s, speaker in self]


class Diarization:
    """The diarization of one signal (see the module docstring).

    Attributes:
        exclusive_speaker_diarization: one speaker at a time, never overlapping.
        speaker_diarization: the regular (overlap-aware) diarization when
            ``overlap_aware``; otherwise the model cannot tell overlapped speech and this
            is the exclusive diarization.
        overlap: overlapped speech regions (``None`` without an overlap model).
        labels: the speakers that have speech, in order of appearance.
        speaker_embeddings: ``(len(labels), dimension)``, row ``i`` for ``labels[i]``.
        duration: seconds of audio.
    """

    def __init__(self, turns: list[Turn], regions: list[Region], engine: Any,
                 uri: str = "audio", audio: str | None = None):
        self.uri = uri
        #: The audio's file name, or None for audio from memory.
        self.audio = audio
        self.duration = float(engine.position)
        self.exclusive_speaker_diarization = Annotation(
            [(Segment(t.start, t.end), t.speaker) for t in turns])
        kinds = {region.kind for region in regions} | set(engine.config.outputs)
        self.overlap_aware = "regular" in kinds
        self.speaker_diarization = (
            Annotation([(Segment(r.start, r.end), str(r.speaker)) for r in regions
                        if r.kind == "regular"])
            if self.overlap_aware else self.exclusive_speaker_diarization)
        self.overlap = ([Segment(r.start, r.end) for r in regions if r.kind == "overlap"]
                        if "overlap" in kinds else None)
        spoken = [s for s in engine.speakers() if s.speech > 0]
        self.labels = [s.label for s in spoken]
        self.speech = {s.label: s.speech for s in spoken}
        dimension = len(spoken[0].embedding) if spoken else 0
        self.speaker_embeddings = np.array([s.embedding for s in spoken],
                                           np.float32).reshape(len(spoken), dimension)
        #: Label -> (known speaker's name, similarity) of the identified speakers.
        self.identities = {s.label: (s.identity, s.similarity) for s in spoken
                           if s.identity is not None}
        self.model = engine.frontend.describe()
        self.config = engine.config.to_public_dict()

    @property
    def embeddings(self) -> dict[str, np.ndarray]:
        """Speaker label -> embedding (unit norm)."""
        return dict(zip(self.labels, self.speaker_embeddings))

    def __iter__(self) -> Iterator[tuple[Segment, str]]:
        """``(segment, speaker)`` pairs of the exclusive diarization."""
        return iter(self.exclusive_speaker_diarization)

    def __len__(self) -> int:
        return len(self.exclusive_speaker_diarization)

    def __repr__(self) -> str:
        return (f"Diarization({self.uri!r}, {self.duration:.1f} s, {len(self)} turns, "
                f"speakers {self.labels})")

    def to_rttm(self, uri: str | None = None, *, regular: bool = False) -> str:
        """The exclusive diarization (``regular=True``: the overlap-aware one) as RTTM."""
        annotation = self.speaker_diarization if regular else self.exclusive_speaker_diarization
        return annotation.to_rttm(uri or self.uri)

    def to_json(self, format: str = "streamer") -> dict[str, Any]:
        """The result as a JSON-ready dict, in one of :data:`JSON_FORMATS`."""
        if format == "meronym":
            return meronym_document(self)
        if format == "streamer":
            return diarization_document(self)
        raise ValueError(f"unknown JSON format {format!r}: choose one of "
                         f"{', '.join(JSON_FORMATS)}")


def diarization_document(result: Diarization) -> dict[str, Any]:
    """The JSON result of file mode, shaped like offline diarization services' output."""
    document: dict[str, Any] = {
        "audio": result.audio if result.audio is not None else result.uri,
        "duration": round(result.duration, 3),
        "num_speakers": len(result.labels),
        "speakers": list(result.labels),
        "segments": result.exclusive_speaker_diarization.to_list(),
    }
    if result.overlap_aware:
        document["regular_segments"] = result.speaker_diarization.to_list()
    if result.overlap is not None:
        document["overlap"] = [{"start": round(s.start, 3), "end": round(s.end, 3)}
                               for s in result.overlap]
    if result.identities:
        document["identities"] = {label: {"identity": name, "similarity": round(value, 4)}
                                  for label, (name, value) in result.identities.items()}
    document.update(
        speech={label: round(seconds, 3) for label, seconds in result.speech.items()},
        embeddings=_rounded(result),
        model=result.model,
        config=result.config,
    )
    return document


def meronym_document(result: Diarization) -> dict[str, Any]:
    """The JSON result in the shape of the hosted pyannote-based diarization services:
    ``{"segments": [{"speaker", "start", "stop"}], "speakers": {"count", "labels",
    "embeddings"}}``, times as ``H:MM:SS.ffffff`` strings, one embedding per label."""
    return {
        "segments": [{"speaker": speaker, "start": clock(s.start), "stop": clock(s.end)}
                     for s, speaker in result.exclusive_speaker_diarization],
        "speakers": {
            "count": len(result.labels),
            "labels": list(result.labels),
            "embeddings": _rounded(result),
        },
    }


def _rounded(result: Diarization) -> dict[str, list[float]]:
    return {label: [round(float(x), 6) for x in vector]
            for label, vector in result.embeddings.items()}


def clock(seconds: float) -> str:
    """``H:MM:SS.ffffff`` (hours unpadded, microseconds always written)."""
    micro = int(round(max(seconds, 0.0) * 1_000_000))
    hours, micro = divmod(micro, 3_600_000_000)
    minutes, micro = divmod(micro, 60_000_000)
    whole, micro = divmod(micro, 1_000_000)
    return f"{hours}:{minutes:02d}:{whole:02d}.{micro:06d}"


def uri_of(path: str | os.PathLike[str]) -> str:
    """The RTTM file id of an audio file: its name without folder and extension."""
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


__all__ = ["Annotation", "Diarization", "JSON_FORMATS", "Segment", "clock",
           "diarization_document", "meronym_document", "uri_of"]
