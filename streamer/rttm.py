"""RTTM and UEM files: reading references, writing hypotheses."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable, TextIO

from streamer.events import Turn

Segment = tuple[float, float, str]  # start, end, speaker


def write_rttm(turns: Iterable[Turn], uri: str, out: TextIO) -> None:
    for turn in turns:
        out.write(rttm_line(uri, turn.start, turn.end, turn.speaker))


def rttm_line(uri: str, start: float, end: float, speaker: str) -> str:
    """One RTTM ``SPEAKER`` line (with its newline). RTTM fields are separated by spaces,
    so whitespace inside the file id or the speaker becomes ``_``."""
    uri, speaker = ("_".join(str(text).split()) or "_" for text in (uri, speaker))
    return (f"SPEAKER {uri} 1 {start:.3f} {end - start:.3f} <NA> <NA> {speaker} "
            f"<NA> <NA>\n")


def read_rttm(path: str | os.PathLike) -> dict[str, list[Segment]]:
    """``{uri: [(start, end, speaker), ...]}`` from an RTTM file."""
    result: dict[str, list[Segment]] = defaultdict(list)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields or fields[0] != "SPEAKER":
                continue
            if len(fields) < 8:
                raise ValueError(f"{path}:{number}: malformed RTTM line")
            start, duration = float(fields[3]), float(fields[4])
            result[fields[1]].append((start, start + duration, fields[7]))
    return dict(result)


def read_uem(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """``{uri: [(start, end), ...]}`` from a UEM file."""
    result: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4:
                raise ValueError(f"{path}:{number}: malformed UEM line")
            result[fields[0]].append((float(fields[2]), float(fields[3])))
    return dict(result)
