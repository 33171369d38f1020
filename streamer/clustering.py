"""Online speaker matching against a memory of global speaker centroids."""
from __future__ import annotations

import numpy as np

from streamer.linalg import min_cost_assignment
from streamer.pitch import MIN_SPREAD, pitch_penalty

_FORBIDDEN = 1e6
#: Below ``min_speakers``, a local speaker is another voice when it lies farther from its
#: nearest speaker than that speaker's own local speakers usually do: their mean distance
#: plus this many standard deviations.
RADIUS_SIGMAS = 2.0
#: Matches a speaker needs before its own spread is trusted; until then its radius is
#: ``YOUNG_RADIUS`` × ``delta_new``.
RADIUS_LEAST = 3
YOUNG_RADIUS = 0.5
#: A displaced local speaker (see :meth:`CentroidMemory.assign`) is another voice only if
#: it lies at least this fraction of ``delta_new`` from the speaker it was kept from.
DISPLACED_DISTANCE = 0.4
#: Pitch may carry a local speaker past ``delta_new`` to a new speaker (directly, or as
#: a displaced voice) only while the local speaker speaks firmly and both its pitch and
#: the speaker's are steady: a spread of at most this many semitones. A voice read at a
#: steady pitch keeps it from turn to turn; a lively voice's pitch moves with its turns,
#: and a speaker's pitch taken partly over another voice spreads as widely, so such a
#: pitch is no sign of another voice. Voices read at one pitch keep within about 1.5
#: semitones; lively real voices reach 2.5 and more.
STEADY_PITCH = 2.5
#: Buffers in a row that a displaced voice needs when its pitch stands apart from the
#: local speaker that took its speaker in the same buffers (both firm, both steady): one
#: buffer heard two voices at once, and one voice split by chance does not change pitch
#: between its halves. A speaker opened on a blend of voices is not steady, so its pitch
#: cannot tell its voices apart; the buffer's own two voices can.
CONTRAST_PERSISTENCE = 3


def pitch_precision(spread: float, frames: float) -> float:
    """How much a local speaker's median pitch counts towards its speaker's: its voiced
    frames over its spread², as a mean's weight is its precision. A local speaker that
    holds two voices (one buffer's clustering put them together) spreads widely; weighed
    by its frames alone, such blends pull the speaker's pitch towards the other voice
    until that voice's own local speakers no longer look apart from it, and a voice that
    the embeddings hold close then never gets a speaker of its own."""
    return float(frames) / max(float(spread), MIN_SPREAD) ** 2


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-8)


class CentroidMemory:
    """Global speakers of one stream as centroids of their local-speaker embeddings.

    :meth:`assign` maps the local speakers of one buffer to global speakers with a
    constrained (one-to-one) assignment that minimises the total cosine distance, where
    opening a new speaker costs ``delta_new``. Only local speakers marked ``can_update``
    (clearly active) may create or update a centroid.

    ``min_speakers`` is a hard lower bound in the streaming sense: while there are fewer
    speakers, a clearly active local speaker becomes a new one as soon as it is farther
    from its nearest speaker than that speaker's own matches usually are (the stream's
    own statistics, :meth:`radius`), not only beyond ``delta_new``. So ``num_speakers=N``
    gives N speakers once N voices have spoken; a voice that has not spoken cannot have a
    label yet. ``max_speakers`` is a hard upper bound: at capacity, a local speaker goes to
    the nearest speaker it may take.

    Each speaker also keeps its voice's pitch (see :mod:`streamer.pitch`): the mean of its
    local speakers' median pitch and of their squared spreads, each local speaker weighed
    by its precision (voiced frames / spread², :func:`pitch_precision`). A
    local speaker whose pitch is far from a speaker's, in units of both spreads, is that
    much farther from it (``pitch_weight`` per unit beyond ``pitch_margin``). Pitch may
    make a local speaker a new speaker, or a displaced voice (below), only where it speaks
    ``firm``ly at a steady pitch and the speaker's own pitch is steady
    (``STEADY_PITCH``); elsewhere only its embedding's distance decides whether it is
    another voice.

    Voices closer than ``delta_new`` are told apart by the buffers themselves: when a
    buffer's clustering finds two voices and the one-to-one assignment gives their nearest
    speaker to the other one, the *displaced* local speaker is left without a speaker. If
    it speaks firmly (``firm``), lies at least ``DISPLACED_DISTANCE`` × ``delta_new`` from
    that speaker, and the same voice (each time within that distance of the running mean
    of the previous ones) is displaced so in ``persistence`` consecutive buffers, it
    becomes a new speaker. One voice split into two local speakers by chance is displaced
    now and then, not buffer after buffer. Pitch counts there only against a speaker
    steady over all its frames (:meth:`spread_over_frames`), not only by precision: a
    speaker opened on a blend of voices must not have its own voice displaced from it.
    Against the local speaker that took the speaker in the same buffer, pitch counts
    whenever both speak firmly at a steady pitch: that much farther, and where their
    pitches stand apart (``pitch_margin``) the voice needs only ``CONTRAST_PERSISTENCE``
    buffers in a row.
    """

    def __init__(self, delta_new: float, max_speakers: int, min_speakers: int = 1,
                 pitch_weight: float = 0.0, pitch_margin: float = 1.0,
                 persistence: int = 8):
        if persistence < 1:
            raise ValueError(f"persistence must be at least 1 buffer, got {persistence}")
        self.delta_new = delta_new
        self.max_speakers = max_speakers
        self.min_speakers = min_speakers
        self.pitch_weight = pitch_weight
        self.pitch_margin = pitch_margin
        self.persistence = persistence
        self.reset()

    def reset(self) -> None:
        self._sums: list[np.ndarray] = []
        # Per speaker: total weight (pitch_precision), and weighted sums of median and spread².
        self._pitch: list[np.ndarray] = []
        # Per speaker: voiced frames, and the sum of spread² × frames (spread_over_frames).
        self._pitch_frames: list[np.ndarray] = []
        # Per speaker: matches, and the sums of their distances and squared distances.
        self._spread: list[np.ndarray] = []
        # The displaced voice being followed: sum of its embeddings and buffers in a row.
        self._displaced: tuple[np.ndarray, int] | None = None

    def __len__(self) -> int:
        return len(self._sums)

    @property
    def sums(self) -> list[np.ndarray]:
        """The centroids' unnormalised sums (a speaker's weight is its sum's length)."""
        return [row.copy() for row in self._sums]

    @property
    def pitch_sums(self) -> list[np.ndarray]:
        """Per speaker ``[weight, sum of median × weight, sum of spread² × weight]`` of
        the pitch it was given, each local speaker's weight its :func:`pitch_precision`."""
        return [row.copy() for row in self._pitch]

    @property
    def pitch_frame_sums(self) -> list[np.ndarray]:
        """Per speaker ``[voiced frames, sum of spread² × frames]`` of the pitch it was
        given (see :meth:`spread_over_frames`)."""
        return [row.copy() for row in self._pitch_frames]

    @property
    def spread_sums(self) -> list[np.ndarray]:
        """Per speaker ``[matches, sum of distances, sum of squared distances]`` of the
        local speakers that updated it (see :meth:`radius`)."""
        return [row.copy() for row in self._spread]

    @property
    def displaced(self) -> tuple[np.ndarray, int] | None:
        """The displaced voice being followed (see the class): the sum of its embeddings
        and the buffers in a row it has been displaced; ``None`` when there is none."""
        if self._displaced is None:
            return None
        return self._displaced[0].copy(), self._displaced[1]

    def load(self, sums: list[np.ndarray], pitch: list[np.ndarray] | None = None,
             spread: list[np.ndarray] | None = None,
             displaced: tuple[np.ndarray, int] | None = None,
             pitch_frames: list[np.ndarray] | None = None) -> None:
        """Start from the speakers of another stream (see :meth:`sums`,
        :meth:`pitch_sums`, :meth:`spread_sums`, :meth:`displaced` and
        :meth:`pitch_frame_sums`; without ``pitch``, the speakers' pitch is unknown,
        without ``spread`` they count as young, without ``displaced`` no displaced voice
        is being followed, without ``pitch_frames`` a speaker's spread over its frames is
        taken as its precision-weighted one)."""
        if len(sums) > self.max_speakers:
            raise ValueError(f"{len(sums)} speakers exceed max_speakers {self.max_speakers}")
        for name, rows in (("pitch", pitch), ("spread", spread), ("pitch frame", pitch_frames)):
            if rows is not None and len(rows) != len(sums):
                raise ValueError(f"{len(rows)} {name} rows for {len(sums)} speakers")
        def copies(rows: list[np.ndarray] | None) -> list[np.ndarray]:
            if rows is None:
                return [np.zeros(3) for _ in sums]
            return [np.asarray(row, np.float64).copy() for row in rows]

        if displaced is not None and (not sums or len(displaced[0]) != len(sums[0])):
            raise ValueError("a displaced voice needs speakers of its dimension")
        self._sums, self._pitch, self._spread = copies(sums), copies(pitch), copies(spread)
        self._pitch_frames = (copies(pitch_frames) if pitch_frames is not None
                              else [row[[0, 2]] for row in self._pitch])
        self.follow(displaced)

    def follow(self, displaced: tuple[np.ndarray, int] | None) -> None:
        """Follow ``displaced`` (see :meth:`displaced`) from here, or none."""
        self._displaced = None if displaced is None else (
            np.asarray(displaced[0], np.float64).copy(), int(displaced[1]))

    def radius(self, speaker: int) -> float:
        """How far from ``speaker``'s centroid its own local speakers lie: the mean
        distance of its matches plus ``RADIUS_SIGMAS`` standard deviations, at most
        ``delta_new`` (``YOUNG_RADIUS`` × ``delta_new`` before ``RADIUS_LEAST``
        matches)."""
        matches, total, squares = self._spread[speaker]
        if matches < RADIUS_LEAST:
            return YOUNG_RADIUS * self.delta_new
        mean = total / matches
        deviation = np.sqrt(max(squares / matches - mean ** 2, 0.0))
        return float(min(mean + RADIUS_SIGMAS * deviation, self.delta_new))

    def pitches(self) -> np.ndarray:
        """``(speakers, 2)``: each speaker's pitch median and spread (NaN: unknown)."""
        result = np.full((len(self._pitch), 2), np.nan)
        for row, (frames, medians, spreads) in enumerate(self._pitch):
            if frames > 0:
                result[row] = medians / frames, np.sqrt(spreads / frames)
        return result

    def spread_over_frames(self) -> np.ndarray:
        """Each speaker's pitch spread with its local speakers weighed by their voiced
        frames alone (NaN: unknown). Weighed by precision (:meth:`pitches`), a speaker
        opened on a blend of two voices looks as steady as its steadiest local speakers;
        over its frames, it spreads as widely as the blend did."""
        result = np.full(len(self._pitch_frames), np.nan)
        for row, (frames, spreads) in enumerate(self._pitch_frames):
            if frames > 0:
                result[row] = np.sqrt(spreads / frames)
        return result

    @property
    def centroids(self) -> np.ndarray:
        if not self._sums:
            return np.zeros((0, 0), np.float32)
        return normalize(np.stack(self._sums))

    def assign(self, embeddings: np.ndarray, can_update: np.ndarray,
               reluctance: float = 1.0, pitch: np.ndarray | None = None,
               firm: np.ndarray | None = None) -> np.ndarray:
        """Global index for each row of ``embeddings`` (-1 when none can be given);
        ``reluctance`` scales the cost of a new speaker. ``pitch`` ``(rows, 3)``: each
        local speaker's pitch median, spread and voiced frames
        (:func:`streamer.pitch.pitch_of`; NaN median: unknown). ``firm`` marks the local
        speakers that speak long enough for a displaced one, or for one's pitch, to make a
        new speaker (see the class); ``None``: none does. Call it once per buffer, in order."""
        count = len(embeddings)
        result = np.full(count, -1, dtype=int)
        if count == 0:
            return result
        embeddings = normalize(np.asarray(embeddings, np.float64))
        known = len(self._sums)
        distances = (1.0 - embeddings @ self.centroids.T) if known else np.zeros((count, 0))
        if pitch is None:
            pitch = np.full((count, 3), np.nan)
        pitch = np.asarray(pitch, np.float64)
        by_embedding = distances
        speakers = self.pitches()
        penalty = pitch_penalty(pitch[:, :2], speakers, self.pitch_weight, self.pitch_margin)
        distances = by_embedding + penalty
        room = self.max_speakers - known
        can_update = np.asarray(can_update, bool)
        firm = np.zeros(count, bool) if firm is None else np.asarray(firm, bool)
        # Whether a local speaker is another voice: pitch counts only where the local
        # speaker speaks firmly at a steady pitch (and, against a speaker, the speaker's
        # own pitch is steady; see STEADY_PITCH); a pitch taken over a lively voice or a
        # blend of voices says nothing of another voice.
        steady = firm & (pitch[:, 1] <= STEADY_PITCH)
        if known:
            judged = by_embedding + np.where(
                steady[:, None] & (speakers[:, 1] <= STEADY_PITCH)[None, :], penalty, 0.0)
            nearest = judged.min(axis=1)
            # A displaced voice is judged against speakers steady over all their frames:
            # the same voice displaced from a speaker opened on a blend of voices would
            # otherwise become a second speaker of one voice.
            displacing = by_embedding + np.where(
                steady[:, None] & (self.spread_over_frames() <= STEADY_PITCH)[None, :],
                penalty, 0.0)
        else:
            judged = displacing = distances
            nearest = np.full(count, np.inf)
        if 0 < known < self.min_speakers:
            radii = np.array([self.radius(k) for k in range(known)])
            cost_new = radii[distances.argmin(axis=1)] * reluctance
        else:
            cost_new = np.full(count, self.delta_new * reluctance)
        # One private extra column per local speaker, costing its cost_new: "new speaker"
        # for a clearly active one that is far from every centroid (while there is room),
        # "leave unassigned" for the others. So a local speaker is never forced onto a
        # centroid farther than cost_new, and a local speaker close to a centroid that
        # another local speaker of the buffer took does not become a new speaker.
        # At capacity, unassigned is the last resort.
        creates = can_update & (nearest > cost_new)
        extra = np.full((count, count), _FORBIDDEN)
        np.fill_diagonal(extra, np.where(creates & (room <= 0), _FORBIDDEN / 2, cost_new))
        cost = np.concatenate([distances, extra], axis=1)
        rows, columns = min_cost_assignment(cost)
        for row, column in sorted(zip(rows, columns), key=lambda rc: cost[rc[0], rc[1]]):
            if column < known:
                result[row] = column
                if can_update[row]:
                    self._sums[column] = self._sums[column] + embeddings[row]
                    self._add_pitch(column, pitch[row])
                    distance = distances[row, column]
                    self._spread[column] = self._spread[column] + [1.0, distance,
                                                                   distance ** 2]
            elif creates[row] and len(self._sums) < self.max_speakers:
                result[row] = self._open(embeddings[row], pitch[row])
        self._follow_displaced(result, displacing, firm & can_update, steady & can_update,
                               embeddings, pitch, reluctance)
        return result

    def _follow_displaced(self, result: np.ndarray, distances: np.ndarray, firm: np.ndarray,
                          steady: np.ndarray, embeddings: np.ndarray, pitch: np.ndarray,
                          reluctance: float) -> None:
        """Follows the buffer's farthest displaced firm local speaker (see the class) and
        makes it a speaker once it has been displaced ``persistence`` buffers in a row
        (``CONTRAST_PERSISTENCE`` where its pitch stands apart from its buffer mate's;
        ``steady``: the local speakers whose pitch may count, see :meth:`assign`)."""
        known = distances.shape[1]
        taken = result[(result >= 0) & (result < known)]
        reach = DISPLACED_DISTANCE * self.delta_new * reluctance
        chosen, farthest, contrasted = -1, reach, False
        # Each local speaker's pitch against each other's, where both are steady.
        contrast = np.where(steady[:, None] & steady[None, :], pitch_penalty(
            pitch[:, :2], pitch[:, :2], self.pitch_weight, self.pitch_margin), 0.0)
        for row in np.flatnonzero((result < 0) & firm):
            nearest = int(np.argmin(distances[row]))
            if nearest not in taken:
                continue
            # Against the local speaker that took its speaker.
            apart = contrast[row, int(np.flatnonzero(result == nearest)[0])]
            if distances[row, nearest] + apart > farthest:
                chosen, farthest, contrasted = row, distances[row, nearest] + apart, apart > 0
        if chosen < 0:
            self._displaced = None
            return
        voice = embeddings[chosen]
        if (self._displaced is not None
                and 1.0 - float(normalize(self._displaced[0]) @ voice) <= reach):
            total, buffers = self._displaced[0] + voice, self._displaced[1] + 1
        else:
            total, buffers = voice.copy(), 1
        self._displaced = total, buffers
        needed = min(self.persistence, CONTRAST_PERSISTENCE) if contrasted else self.persistence
        if buffers >= needed and len(self._sums) < self.max_speakers:
            # The buffers' embeddings of the voice overlap in time: their sum weighs like
            # one local speaker's, not like `persistence` of them.
            result[chosen] = self._open(normalize(total), pitch[chosen])
            self._displaced = None

    def _open(self, embedding: np.ndarray, pitch: np.ndarray) -> int:
        """A new speaker from ``embedding`` (its centroid sum) and a local speaker's
        ``pitch``; returns its index."""
        self._sums.append(embedding.copy())
        self._pitch.append(np.zeros(3))
        self._pitch_frames.append(np.zeros(2))
        self._spread.append(np.zeros(3))
        self._add_pitch(len(self._sums) - 1, pitch)
        return len(self._sums) - 1

    def _add_pitch(self, speaker: int, pitch: np.ndarray) -> None:
        median, spread, frames = pitch
        if np.isfinite(median) and frames > 0:
            self._pitch[speaker] = self._pitch[speaker] + pitch_precision(spread, frames) \
                * np.array([1.0, median, spread ** 2])
            self._pitch_frames[speaker] = self._pitch_frames[speaker] \
                + frames * np.array([1.0, spread ** 2])
