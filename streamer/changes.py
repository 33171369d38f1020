"""Speaker change events for voice agents: ``speaker_start`` as soon as the interim view
shows a turn, ``speaker_end`` as soon as the interim view shows it closed (or its final
version comes first).

They follow the turn events: every ``speaker_start`` is matched by one ``speaker_end`` of
the same turn and speaker, and every final turn has had its pair. When the final turn
names another speaker than the interim view did, the earlier pair is corrected: a
``speaker_end`` with ``retracted: true`` for the wrong speaker (unless it was already
sent), then the right speaker's pair. A turn that resumes within ``min_duration_off``
after it looked closed gets a new ``speaker_start`` with the same turn id.
"""
from __future__ import annotations

from streamer.events import SpeakerChange, Turn


class ChangeTracker:
    """Per stream: turns announced and not ended, and turns ended before their final."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._open: dict[int, Turn] = {}  # started, not ended: id -> latest view
        self._ended: dict[int, Turn] = {}  # ended from the interim view, not yet final

    def update(self, finals: list[Turn], view: Turn | None) -> list[SpeakerChange]:
        """Changes implied by the final turns of one engine call and the interim view of
        the open turn after it (``None``: no open turn shown)."""
        changes: list[SpeakerChange] = []
        for turn in finals:
            changes += self._finalise(turn)
        for turn_id, latest in list(self._open.items()):
            if view is None or view.id != turn_id:  # the view shows it closed
                del self._open[turn_id]
                self._ended[turn_id] = latest
                changes.append(SpeakerChange("speaker_end", turn_id, latest.speaker,
                                             latest.end))
        if view is not None:
            changes += self._show(view)
        return changes

    def flush(self) -> list[SpeakerChange]:
        """End of stream, after the last final turns: close what is still open."""
        changes = [SpeakerChange("speaker_end", t.id, t.speaker, t.end)
                   for t in self._open.values()]
        self.reset()
        return changes

    def _show(self, view: Turn) -> list[SpeakerChange]:
        changes: list[SpeakerChange] = []
        started = self._open.get(view.id)
        if started is not None and started.speaker != view.speaker:
            changes.append(SpeakerChange("speaker_end", started.id, started.speaker,
                                         started.end, retracted=True))
            started = None
        if started is None:
            self._ended.pop(view.id, None)  # a turn that looked closed resumes
            changes.append(SpeakerChange("speaker_start", view.id, view.speaker, view.start))
        self._open[view.id] = view
        return changes

    def _finalise(self, turn: Turn) -> list[SpeakerChange]:
        changes: list[SpeakerChange] = []
        announced = self._open.pop(turn.id, None)
        ended = self._ended.pop(turn.id, None)
        if announced is not None and announced.speaker != turn.speaker:
            changes.append(SpeakerChange("speaker_end", announced.id, announced.speaker,
                                         announced.end, retracted=True))
            announced = None
        if announced is None:
            if ended is None or ended.speaker != turn.speaker:
                changes.append(SpeakerChange("speaker_start", turn.id, turn.speaker,
                                             turn.start))
                ended = None
        if ended is None:
            changes.append(SpeakerChange("speaker_end", turn.id, turn.speaker, turn.end))
        return changes


__all__ = ["ChangeTracker"]
