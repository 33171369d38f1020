"""The streaming diarization engine: one network-free state object per stream.

``feed(samples) -> events``, ``flush() -> events``, ``reset()``. Per step of the rolling
buffer: the front end finds local speakers and their embeddings, the centroid memory maps
them to global speakers, the aggregator averages the overlapping buffers, and the turn
builder turns frames older than ``latency`` into final turns (newer frames give the
interim view of the open turn).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from streamer.aggregation import Aggregator
from streamer.audio import SAMPLE_RATE, clip_samples, prepare_samples
from streamer.buffer import RollingBuffer
from streamer.clustering import CentroidMemory
from streamer.config import FILE_PASSES, MAX_PASSES, StreamConfig
from streamer.changes import ChangeTracker
from streamer.errors import AudioFormatError, ConfigError
from streamer.events import (OVERLAP_OUTPUTS, Region, SpeakerChange, SpeakerSummary, Turn,
                             speaker_label)
from streamer.models.base import BufferAnalysis, Frontend, embedding_identity
from streamer.models.calls import Steps, run_direct
from streamer.pitch import HOP as PITCH_HOP
from streamer.pitch import PitchTrack, pitch_of
from streamer.regions import RegionTracker
from streamer.turns import TurnPolicy
from streamer.voiceprints import Identifier, check_models

#: An engine event: an exclusive turn, or an event of an opt-in output.
Event = Turn | Region | SpeakerChange

logger = logging.getLogger(__name__)

#: Format version of :meth:`StreamingDiarizer.state`.
STATE_VERSION = 1
#: How much dearer a new speaker is while a resumed stream's buffer fills up.
RESUME_RELUCTANCE = 1.5
#: A local speaker displaced from its nearest speaker by another voice of its buffer
#: becomes a new speaker when this happens for this long without a break (in buffers:
#: this over the step), so that a voice held close to another by the embeddings still
#: gets its own label (see streamer.clustering.CentroidMemory) ...
DISPLACED_SECONDS = 4.0
#: ... and only while it speaks for at least this fraction of the buffer (as pitch makes
#: a new speaker only of a local speaker that speaks this much).
FIRM_SPEECH = 0.3


def state_identity(frontend: Frontend) -> dict:
    """What a speaker state depends on: the embeddings' model (the centroids are its
    vectors) and the segmentation model's source."""
    return {**embedding_identity(frontend),
            "segmentation": frontend.describe().get("segmentation")}


class StreamingDiarizer:
    """Diarizes one stream of 16 kHz mono float32 samples, incrementally.

    ``file_mode``: the whole signal is at hand (a file, an array) and nobody waits for
    its turns, so an unset ``config.latency`` is the buffer's duration instead of
    ``DEFAULT_LATENCY``: each frame is decided once every buffer that covers it has been
    matched, by which time the speakers of the stream are better known (a voice met in
    later buffers has its own label by then). A stream fed live keeps ``DEFAULT_LATENCY``;
    a file diarized with ``latency=2.0`` gives exactly the turns of that live stream."""

    def __init__(self, frontend: Frontend, config: StreamConfig | None = None, *,
                 file_mode: bool = False):
        self.frontend = frontend
        self.sample_rate = frontend.sample_rate
        self.config = (config or StreamConfig()).resolve(
            frontend.chunk_duration, frontend.default_delta_new,
            frontend.default_speech_threshold,
            frontend.default_identity_threshold, frontend.default_pitch_weight, file_mode)
        c = self.config
        if c.known_speakers:
            check_models(c.known_speakers, embedding_identity(frontend))
        self._identifier = Identifier(c.known_speakers, c.identity_threshold,
                                      c.pitch_weight, c.pitch_margin)
        needs_overlap = [name for name in c.outputs if name in OVERLAP_OUTPUTS]
        if needs_overlap and not frontend.detects_overlap:
            raise ConfigError(
                f"the {frontend.name} preset has no overlapped speech model, so it cannot "
                f"give the {' and '.join(needs_overlap)} output(s): use the pyannote preset")
        self.resolution = frontend.frame_step
        step = int(round(c.step * self.sample_rate))
        #: A resumed stream's audio context starts on a multiple of this (see context()).
        self._alignment = math.lcm(step, int(frontend.sample_alignment))
        self._buffer = RollingBuffer(int(round(c.duration * self.sample_rate)), step,
                                     history=self._alignment)
        self._memory = CentroidMemory(c.delta_new, c.max_speakers, c.min_speakers,
                                      c.pitch_weight, c.pitch_margin,
                                      max(1, round(DISPLACED_SECONDS / c.step)))
        self._pitch = PitchTrack()
        # One more column than speakers: the number of active local speakers per frame,
        # averaged like the activations, gives the overlap-aware outputs their counts.
        self._aggregator = Aggregator(self.resolution, c.max_speakers + 1,
                                      frontend.aggregation_window)
        self._policy = TurnPolicy(self.resolution, self.sample_rate, c.latency,
                                  c.speech_threshold, c.min_duration_on, c.min_duration_off,
                                  speaker_label)
        self._regions = RegionTracker(c.outputs, self.resolution, c.min_duration_on,
                                      c.min_duration_off)
        self._changes = ChangeTracker() if "speaker_changes" in c.outputs else None
        self.reset()

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget everything: the next sample is t=0 of a new stream."""
        self._buffer.reset()
        self._memory.reset()
        self._pitch.reset()
        self._aggregator.reset()
        self._policy.reset()
        self._regions.reset()
        if self._changes is not None:
            self._changes.reset()
        self._stream = self.frontend.stream(self.config)
        self._speech: dict[str, float] = {}
        self._restored = False
        self._finished = False
        self._origin = 0  # samples of a primed stream's context, before its time 0
        self._cut: int | None = None  # samples of the stream a restored state comes from
        self._carried: Any = None  # what its front end's stream left for a primed one
        self._another_pass = False  # the speakers come from a pass before over this audio
        # A pass's buffer analyses, kept for the next pass over the same audio, and the
        # ones this pass replays (see run_passes).
        self._analyses: list[BufferAnalysis] | None = None
        self._replaying: Iterator[BufferAnalysis] | None = None

    @property
    def position(self) -> float:
        """Seconds of audio fed so far (a primed stream's context not counted)."""
        return (self._buffer.received - self._origin) / self.sample_rate

    @property
    def samples_to_next_step(self) -> int:
        """Samples the next step still needs: audio fed short of it is only queued (the
        engine decides nothing until a step completes)."""
        return self._buffer.missing

    def feed(self, samples: np.ndarray) -> list[Event]:
        """Add audio; returns the events it produced: turns (final and interim), and the
        final regions of the opt-in ``config.outputs``.

        ``samples`` are 16 kHz mono floats in full scale [-1, 1] (see
        :func:`diarize_array` for other rates, integer PCM and channels). Samples beyond
        full scale are clipped; NaN or infinity, integer or other non-float samples, and
        more than one channel raise :class:`AudioFormatError`."""
        return run_direct(self.feed_steps(samples), self.frontend.models)

    def feed_steps(self, samples: np.ndarray) -> Steps[list[Event]]:
        """:meth:`feed` as model calls (see :mod:`streamer.models.calls`), for a
        scheduler that batches the calls of many streams; the audio is checked before
        the first call."""
        samples = self._checked(samples)
        return self._feed(samples)

    def _checked(self, samples: np.ndarray) -> np.ndarray:
        if self._finished:
            raise RuntimeError("flush() ended this stream: call reset() to start another")
        samples = np.asarray(samples)
        if samples.dtype.kind != "f":
            raise AudioFormatError(
                f"feed takes float samples in [-1, 1] at {self.sample_rate} Hz, got dtype "
                f"{samples.dtype}: scale integer PCM first (int16: samples / 32768) or use "
                f"diarize_array(..., sample_rate=...)")
        if sum(size > 1 for size in samples.shape) > 1:
            raise AudioFormatError(
                f"feed takes one channel, got shape {samples.shape}: average the channels "
                f"first or use diarize_array(..., sample_rate=...)")
        return clip_samples(samples.reshape(-1), "samples")

    def _feed(self, samples: np.ndarray) -> Steps[list[Event]]:
        events: list[Event] = []
        stepped = False
        for buffer, end in self._buffer.push(samples):
            yield from self._process(buffer, end)
            events += self._commit(end)
            stepped = True
        if stepped:
            events += self._interim()
            events += self._speaker_changes(events, self._policy.view)
        return self._identify(self._from_origin(events))

    def flush(self) -> list[Event]:
        """End of stream: decide every remaining frame; returns the last final turns and
        regions."""
        return run_direct(self.flush_steps(), self.frontend.models)

    def flush_steps(self) -> Steps[list[Event]]:
        """:meth:`flush` as model calls (see :meth:`feed_steps`)."""
        if self._finished:
            return []
        tail = self._buffer.tail()
        end = self._buffer.received
        if tail is not None:
            # The tail is padded past the end of the input: it says nothing of whether a
            # displaced voice still is one, so the one followed stays as it was and a
            # stream resumed from this one's state goes on counting as this one would.
            following, speakers = self._memory.displaced, len(self._memory)
            yield from self._process(*tail)
            if len(self._memory) == speakers:
                self._memory.follow(following)
        events = self._commit(end, final=True)
        events += self._record(self._policy.turns.flush())
        events += self._regions.flush()
        events += self._speaker_changes(events, None)
        if self._changes is not None:
            events += self._changes.flush()
        self._finished = True
        return self._identify(self._from_origin(events))

    def state(self) -> dict:
        """The stream's speaker memory, to continue it in another engine on the same
        models (:meth:`restore`): the model identity, and per global speaker its label,
        centroid sum, seconds of speech, pitch sums and the sums of its matches'
        distances; the displaced voice being followed, if any (its embeddings' sum and
        the buffers in a row it was displaced); the samples received, which place a
        resumed stream's :meth:`prime` context on this stream's analysis grid; and what
        the front end's stream keeps for a primed one (its ``resume_state()``, if it has
        one: the embedded preset's VAD state). JSON-ready."""
        memory = self._memory
        displaced = memory.displaced
        return {"version": STATE_VERSION, "model": state_identity(self.frontend),
                "samples": int(self._buffer.received),
                "frontend": (self._stream.resume_state()
                             if hasattr(self._stream, "resume_state") else None),
                "displaced": None if displaced is None else {
                    "sum": [float(x) for x in displaced[0]], "buffers": displaced[1]},
                "speakers": [{"label": speaker_label(i), "sum": [float(x) for x in row],
                              "speech": round(self._speech.get(speaker_label(i), 0.0), 3),
                              "pitch": [round(float(x), 3) for x in pitch],
                              "pitch_frames": [round(float(x), 3) for x in frames],
                              "spread": [float(x) for x in spread]}
                             for i, (row, pitch, frames, spread) in enumerate(zip(
                                 memory.sums, memory.pitch_sums, memory.pitch_frame_sums,
                                 memory.spread_sums))]}

    def restore(self, state: dict) -> None:
        """Continue the speakers of ``state`` (from :meth:`state`): known voices keep
        their labels, new ones get the next labels. Call it before any audio.

        Raises:
            ConfigError: a state of another version or model, or a malformed one."""
        if self.position > 0:
            raise RuntimeError("restore() comes before any audio")
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ConfigError(f"unknown speaker state version: expected {STATE_VERSION}")
        identity = state_identity(self.frontend)
        if state.get("model") != identity:
            raise ConfigError("the speaker state comes from other models "
                              f"({state.get('model')!r}), not {identity!r}")
        try:
            speakers = list(state["speakers"])
            sums = [np.asarray(s["sum"], np.float64) for s in speakers]
            speech = {speaker_label(i): float(s["speech"]) for i, s in enumerate(speakers)}
            labels = [s["label"] for s in speakers]
            # States saved before pitch or spreads were kept have none: those voices'
            # pitch is unknown and the speakers count as young.
            pitch, spread = ([np.asarray(s.get(key, [0.0, 0.0, 0.0]), np.float64)
                              for s in speakers] for key in ("pitch", "spread"))
            # States saved before speakers kept their pitch over frames take their
            # precision-weighted spread for it.
            frames = (None if any("pitch_frames" not in s for s in speakers) else
                      [np.asarray(s["pitch_frames"], np.float64) for s in speakers])
            # So do states saved before displaced voices were followed.
            displaced = state.get("displaced")
            if displaced is not None:
                displaced = (np.asarray(displaced["sum"], np.float64),
                             displaced["buffers"])
            # And states saved before they counted their samples: a context given to
            # prime() is then used as it comes.
            samples = state.get("samples")
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"malformed speaker state: {error}") from None
        dimension = identity["dimension"]
        if labels != [speaker_label(i) for i in range(len(labels))] or any(
                row.shape != (dimension,) or not np.isfinite(row).all() for row in sums):
            raise ConfigError("malformed speaker state: labels or centroids do not fit")
        # Pitch sums hold a median sum that may be below 0; every other count or sum not.
        for name, rows, width, counts in (("pitch", pitch, 3, slice(0, 1)),
                                          ("spread", spread, 3, slice(None)),
                                          ("pitch frame", frames or [], 2, slice(None))):
            if any(row.shape != (width,) or not np.isfinite(row).all()
                   or (row[counts] < 0).any() for row in rows):
                raise ConfigError(f"malformed speaker state: {name} sums do not fit")
        if displaced is not None and (
                displaced[0].shape != (dimension,) or not np.isfinite(displaced[0]).all()
                or type(displaced[1]) is not int or displaced[1] < 1):
            raise ConfigError("malformed speaker state: the displaced voice does not fit")
        if samples is not None and (type(samples) is not int or samples < 0):
            raise ConfigError("malformed speaker state: samples must be a count")
        try:
            self._memory.load(sums, pitch, spread, displaced, frames)
        except ValueError as error:
            raise ConfigError(f"the speaker state does not fit this stream: {error}") from None
        self._speech = speech
        self._restored = True
        self._cut = samples
        self._carried = state.get("frontend")

    @property
    def context_limit(self) -> int:
        """The most samples :meth:`context` gives (and :meth:`prime` uses)."""
        return self._buffer.size + self._alignment

    def context(self) -> np.ndarray:
        """The audio a resumed stream needs to go on as this one would have (see
        :meth:`prime`): the last samples received, from a point where the analysis grid
        of a stream started there matches this one's, at least one buffer back."""
        received = self._buffer.received
        start = max(0, (received - self._buffer.size) // self._alignment * self._alignment)
        return self._buffer.recent(received - start)

    def prime(self, context: np.ndarray) -> None:
        """Give a resumed stream (after :meth:`restore`) the audio that preceded the cut:
        the :meth:`context` of the stream it continues, or any stretch of that stream's
        audio that ends where this one starts (a client's own copy). It is analysed as
        that stream analysed it, so the first buffers of this one hold real audio, not
        padding, and its decisions are those the uncut stream would have made. Only the
        last :attr:`context_limit` samples at most are used, from a point on the analysis
        grid of the stream the state comes from (its ``samples``; a state without them
        takes the context as it comes). Nothing is decided or sent for the context, the
        speaker memory stays as restored, and times still start at 0 where the context
        ends. Without it, a resumed stream starts with an empty buffer (and is slower to
        open new speakers meanwhile)."""
        run_direct(self.prime_steps(context), self.frontend.models)

    def prime_steps(self, context: np.ndarray) -> Steps[None]:
        """:meth:`prime` as model calls (see :meth:`feed_steps`); the context is checked
        before the first call."""
        if self._buffer.received:
            raise RuntimeError("prime() comes before any audio")
        context = clip_samples(np.asarray(context, np.float32).reshape(-1), "context")
        context = context[len(context) - self.context_used(len(context)):]
        carried, continue_from = self._carried, getattr(self._stream, "continue_from", None)
        if carried is not None and continue_from is not None and self._cut is not None \
                and len(context):
            try:
                continue_from(carried, self._cut - len(context))
            except ValueError as error:
                raise ConfigError(f"malformed speaker state: {error}") from None
        return self._prime(context)

    def context_used(self, given: int) -> int:
        """How many of the last ``given`` samples of a context :meth:`prime` uses: where
        the restored state counted its samples, as many as that stream's :meth:`context`
        held, or the longest part of them that starts on its analysis grid; else at most
        :attr:`context_limit`."""
        if self._cut is None:
            return min(given, self.context_limit)
        whole = self._cut - max(0, (self._cut - self._buffer.size)
                                // self._alignment * self._alignment)
        if given >= whole:
            return whole
        return max(0, given - (given - self._cut) % self._alignment)

    def _prime(self, context: np.ndarray) -> Steps[None]:
        memory = self._memory
        sums, pitch, spread = memory.sums, memory.pitch_sums, memory.spread_sums
        frames = memory.pitch_frame_sums
        displaced = memory.displaced
        speech = dict(self._speech)
        for buffer, end in self._buffer.push(context):
            yield from self._process(buffer, end)
        # The context's frames were decided by the stream it comes from.
        self._commit(self._buffer.received, final=True)
        self._policy.cut()
        self._regions.cut()
        if self._changes is not None:
            self._changes.reset()
        self._memory.load(sums, pitch, spread, displaced, frames)
        self._speech = speech
        self._origin = self._buffer.received
        # Buffers are full from here: the reluctance for an empty buffer does not apply.
        self._restored = False

    def _from_origin(self, events: list[Event]) -> list[Event]:
        """Times of a primed stream's events counted from the end of its context."""
        if not self._origin or not events:
            return events
        shift = self._origin / self.sample_rate
        moved: list[Event] = []
        for event in events:
            if isinstance(event, SpeakerChange):
                event = dataclasses.replace(event, time=event.time - shift)
            elif isinstance(event, (Turn, Region)):
                event = dataclasses.replace(event, start=max(0.0, event.start - shift),
                                            end=event.end - shift)
            moved.append(event)
        return moved
    def speakers(self) -> list[SpeakerSummary]:
        """Global speakers so far: label, seconds of speech in final turns, centroid."""
        centroids = self._memory.centroids
        identities = self.identities()
        pitches = self._memory.pitches()
        return [SpeakerSummary(speaker_label(i), self._speech.get(speaker_label(i), 0.0),
                               centroids[i].astype(float).tolist(),
                               *identities.get(speaker_label(i), (None, None)),
                               pitch=(tuple(float(x) for x in pitches[i])
                                      if np.isfinite(pitches[i]).all() else None))
                for i in range(len(centroids))]

    def identities(self) -> dict[str, tuple[str, float]]:
        """Speaker label -> (known speaker's name, similarity) for the speakers that match
        a voiceprint of ``config.known_speakers`` now."""
        if not self.config.known_speakers or len(self._memory) == 0:
            return {}
        matches = self._identifier.match(self._memory.centroids, self._memory.pitches())
        return {speaker_label(i): match for i, match in matches.items()}

    # ------------------------------------------------------------------ internals
    def _identify(self, events: list[Event]) -> list[Event]:
        """Turns and speaker changes of identified speakers, named (as matched now: a
        speaker's centroid, hence its identity, may still change while it is young)."""
        if not self.config.known_speakers or not events:
            return events
        identities = self.identities()
        if not identities:
            return events
        named: list[Event] = []
        for event in events:
            match = identities.get(getattr(event, "speaker", None) or "")
            if match is not None and isinstance(event, (Turn, SpeakerChange)):
                event = dataclasses.replace(event, identity=match[0], similarity=match[1])
            named.append(event)
        return named

    def _keep_for_next_pass(self) -> None:
        """Keep the models' outputs of this stream for :meth:`_next_pass`: the front end's
        stream records them where it can, else the buffer analyses are kept whole where
        they do not depend on the stream's speakers (see :func:`run_passes`)."""
        if hasattr(self._stream, "record"):
            self._stream.record()
        elif not getattr(self.frontend, "analysis_uses_speakers", True):
            self._analyses = []

    def _next_pass(self, config: StreamConfig | None) -> "StreamingDiarizer":
        """A new engine in file mode for the same audio (``config`` as given to this one)
        whose memory starts with this stream's speakers (see :func:`run_passes`)."""
        found = len(self._memory)
        config = config or StreamConfig()
        if found >= self.config.min_speakers:
            config = dataclasses.replace(config, num_speakers=None,
                                         min_speakers=self.config.min_speakers,
                                         max_speakers=found)
        engine = StreamingDiarizer(self.frontend, config, file_mode=True)
        engine._another_pass = True
        # The same audio in the same steps: the models' outputs are those of this pass.
        recording = self._stream.recording() if hasattr(self._stream, "recording") else None
        if recording is not None:
            engine._stream.replay(recording)
        if self._analyses is not None:
            engine._analyses = self._analyses
            engine._replaying = iter(self._analyses)
        memory = self._memory
        engine._memory.load(memory.sums, memory.pitch_sums, memory.spread_sums,
                            pitch_frames=memory.pitch_frame_sums)
        return engine

    def _process(self, buffer: np.ndarray, end: int) -> Steps[None]:
        start = (end - len(buffer)) / self.sample_rate
        # The speakers told apart so far: a front end may keep them apart in the buffer.
        speakers = self._memory.centroids if len(self._memory) else None
        if self._replaying is not None:
            analysis = next(self._replaying)
        else:
            analysis = yield from self._stream.analyze(buffer, start, speakers)
            if self._analyses is not None:
                self._analyses.append(analysis)
        new = end - self._pitch.received
        if new > 0 and self.config.pitch_weight > 0 and analysis.pitch is None:
            self._pitch.push(buffer[len(buffer) - min(new, len(buffer)):])
            self._pitch.forget((end - len(buffer)) // PITCH_HOP)
        activations, speech = self._to_global(analysis, end - len(buffer))
        self._aggregator.add(activations, speech, analysis.frames, start, analysis.confidence)

    def _to_global(self, analysis: BufferAnalysis, first_sample: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        local = np.asarray(analysis.activations, np.float64)
        frames, count = local.shape
        if analysis.speech is not None:
            speech = np.asarray(analysis.speech, np.float64)
        else:
            speech = local.max(axis=1) if count else np.zeros(frames)
        result = np.zeros((frames, c.max_speakers + 1))
        if count == 0:
            return result, speech
        active = local >= c.speech_threshold
        result[:, -1] = active.sum(axis=1)
        embeddings = np.asarray(analysis.embeddings, np.float64)
        usable = usable_locals(local, embeddings, c.tau_active)
        if not usable.any():
            return result, speech
        speech_seconds = active.sum(axis=0) * analysis.frames.step
        can_update = usable & (speech_seconds >= c.rho_update * c.duration)
        chosen = np.flatnonzero(usable)
        # The first buffers of a resumed stream hold little audio, so their embeddings
        # are noisy: a known voice must not become a new speaker on their account.
        resuming = self._restored and self._buffer.received < self._buffer.size
        globals_ = self._memory.assign(embeddings[chosen], can_update[chosen],
                                       RESUME_RELUCTANCE if resuming else 1.0,
                                       self._local_pitch(local[:, chosen], active[:, chosen],
                                                         analysis, first_sample),
                                       (speech_seconds >= FIRM_SPEECH * c.duration)[chosen])
        for index, target in zip(chosen, globals_):
            if target >= 0:
                result[:, target] = np.maximum(result[:, target], local[:, index])
        return result, speech

    def _local_pitch(self, local: np.ndarray, active: np.ndarray, analysis: BufferAnalysis,
                     first_sample: int) -> np.ndarray:
        """Pitch (median, spread, voiced frames) of each local speaker over the frames
        where it speaks, and louder than any other local speaker."""
        if self.config.pitch_weight <= 0:
            return np.full((local.shape[1], 3), np.nan)
        if analysis.pitch is not None:
            semitones = np.asarray(analysis.pitch, np.float64)
        else:
            centres = (first_sample
                       + analysis.frames.center(np.arange(len(local))) * self.sample_rate)
            semitones = self._pitch.over(centres, analysis.frames.step * self.sample_rate)
        dominant = np.argmax(local, axis=1)
        return np.array([pitch_of(semitones[active[:, k] & (dominant == k)])
                         for k in range(local.shape[1])]).reshape(-1, 3)

    def _commit(self, end_sample: int, final: bool = False) -> list[Event]:
        """Decide the frames that the step ending at ``end_sample`` makes final (all
        received frames if ``final``) and feed their labels to the turn builder; returns
        the turns made final."""
        end_frame = self._policy.decided_until(self._buffer.received, end_sample, final)
        if end_frame <= self._aggregator.first:
            return []
        # The frames after the decided ones are seen too: a change of speaker among
        # them may move to a pause among the decided frames (TurnPolicy.decide).
        ahead, ahead_speech = self._aggregator.peek(self._aggregator.available)
        first, columns, speech = self._aggregator.commit(end_frame)
        activations, count = columns[:, :-1], columns[:, -1]
        missing = max(end_frame - first - len(speech), 0)
        labels = np.concatenate([self._policy.decide(ahead[:, :-1], ahead_speech, len(speech),
                                                     known=self._known()),
                                 np.full(missing, -1)])
        events: list[Event] = self._record(self._policy.turns.push(labels))
        if self.config.outputs:
            activations = np.concatenate([activations, np.zeros((missing, activations.shape[1]))])
            count = np.concatenate([count, np.zeros(missing)])
            events += self._regions.push(labels, activations, count)
        return events

    def _interim(self) -> list[Turn]:
        columns, speech = self._aggregator.peek(self._aggregator.available)
        return self._policy.interim(columns[:, :-1], speech, known=self._known())

    def _known(self) -> bool:
        """Whether speakers are known here, for the speech no speaker claims before any
        claimed frame (:meth:`TurnPolicy.decide`). A later pass over a file knows the
        speakers its first pass found, but that speech is the first speaker's as in the
        first pass: those speakers are this stream's, not another's."""
        return len(self._memory) > 0 and not self._another_pass

    def _speaker_changes(self, events: list[Event], view: Turn | None) -> list[Event]:
        if self._changes is None:
            return []
        finals = [e for e in events if isinstance(e, Turn) and e.final]
        return list(self._changes.update(finals, view))

    def _record(self, finals: list[Turn]) -> list[Turn]:
        for turn in finals:
            self._speech[turn.speaker] = self._speech.get(turn.speaker, 0.0) + turn.duration
        return finals


def diarize_array(frontend: Frontend, samples: np.ndarray, config: StreamConfig | None = None,
                  chunk: float = 0.5, progress=None, *, sample_rate: int = SAMPLE_RATE,
                  passes: int = 1) -> tuple[list[Turn], StreamingDiarizer]:
    """Stream a whole signal through a new engine; returns its final turns and the engine.

    ``samples`` may be float (full scale [-1, 1]) or int8/int16/int32/uint8 PCM, mono
    ``(time,)`` or with channels on either axis, at any ``sample_rate``: it is scaled,
    downmixed and resampled to 16 kHz, the rate of every model here, first (see
    :func:`streamer.audio.prepare_samples`). A bad dtype, shape or rate raises
    :class:`AudioFormatError`. ``passes``: how many times the signal is streamed (see
    :func:`run_passes`); 1, the default, gives the turns of one stream."""
    samples = prepare_samples(samples, sample_rate)
    turns, _, engine = run_passes(
        frontend, lambda: chunked(samples, chunk, frontend.sample_rate), config, progress,
        passes)
    return turns, engine


def chunked(samples: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE
            ) -> Iterable[np.ndarray]:
    """``samples`` in consecutive chunks of ``seconds`` (the last one shorter), as
    :func:`diarize_array` feeds them."""
    size = max(1, int(seconds * sample_rate))
    return (samples[offset: offset + size] for offset in range(0, len(samples), size))


def usable_locals(activations: np.ndarray, embeddings: np.ndarray, tau_active: float
                  ) -> np.ndarray:
    """Which local speakers of a buffer take part in speaker matching: those with a
    finite embedding whose activation reaches ``tau_active`` somewhere."""
    return np.isfinite(embeddings).all(axis=1) & (activations.max(axis=0) >= tau_active)


def diarize_chunks(frontend: Frontend, chunks: Iterable[np.ndarray],
                   config: StreamConfig | None = None,
                   progress: Callable[[int], None] | None = None,
                   ) -> tuple[list[Turn], StreamingDiarizer]:
    """Feed ``chunks`` to a new engine, then flush it; returns its final turns and the
    engine. ``progress`` gets the number of samples fed so far after each chunk."""
    finals, _, engine = run_chunks(frontend, chunks, config, progress)
    return finals, engine


def run_chunks(frontend: Frontend, chunks: Iterable[np.ndarray],
               config: StreamConfig | None = None,
               progress: Callable[[int], None] | None = None,
               ) -> tuple[list[Turn], list[Region], StreamingDiarizer]:
    """Like :func:`diarize_chunks`, also returning the final regions of the opt-in
    ``config.outputs``: ``(turns, regions, engine)``."""
    engine = StreamingDiarizer(frontend, config, file_mode=True)
    turns, regions = run_engine(engine, chunks, progress)
    return turns, regions, engine


def run_passes(frontend: Frontend, chunks: Callable[[], Iterable[np.ndarray]],
               config: StreamConfig | None = None,
               progress: Callable[[int], None] | None = None, passes: int = FILE_PASSES,
               ) -> tuple[list[Turn], list[Region], StreamingDiarizer]:
    """Diarize audio that can be read more than once (a file, an array; ``chunks()``
    gives its chunks afresh each time), in file mode; returns the last pass's turns,
    regions and engine.

    The first pass streams the audio as :func:`run_chunks` does and finds its speakers.
    Each further pass streams it again from a speaker memory that starts with the
    speakers the pass before found (centroids, pitch, spreads), with no room for others
    unless ``min_speakers`` asks for more: so a voice first heard late in the file is
    known from its start, and the first seconds do not decide everything (a speaker
    whose first centroid blended two voices, before the second one had a speaker of its
    own, is matched against both voices' full centroids). A stream fed live cannot go
    back, and gives the first pass's turns. ``progress`` gets the samples of one pass
    done so far, spread over the passes (it reaches the audio's length at the end).

    The models run in the first pass only; the later ones replay their outputs and cost
    the clustering and tracking. A front end whose buffer analyses do not depend on the
    stream's speakers (``analysis_uses_speakers = False``: the pyannote presets') has
    its analyses kept whole, about 20 kB per second of audio; one whose streams record
    their model outputs (the embedded preset's,
    :meth:`streamer.models.embedded.EmbeddedStream.record`) keeps those, about 2 kB per
    second. Any other runs its models again in each pass."""
    if type(passes) is not int or not 1 <= passes <= MAX_PASSES:
        raise ConfigError(f"passes must be an integer from 1 to {MAX_PASSES}, got {passes!r}")
    total = 0

    def report(index: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda done: progress((index * total + done) // passes)

    engine = StreamingDiarizer(frontend, config, file_mode=True)
    if passes > 1:
        engine._keep_for_next_pass()
    turns, regions = run_engine(engine, chunks(), report(0))
    for index in range(1, passes):
        total = engine._buffer.received
        if not len(engine._memory):
            break  # no speaker found: another pass would find none either
        engine = engine._next_pass(config)
        turns, regions = run_engine(engine, chunks(), report(index))
    if progress is not None and passes > 1:
        progress(engine._buffer.received)
    return turns, regions, engine


def run_engine(engine: StreamingDiarizer, chunks: Iterable[np.ndarray],
               progress: Callable[[int], None] | None = None,
               ) -> tuple[list[Turn], list[Region]]:
    """Feed ``chunks`` to ``engine``, then flush it; returns its final turns and the
    final regions of the opt-in outputs."""
    turns: list[Turn] = []
    regions: list[Region] = []

    def keep(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Region):
                regions.append(event)
            elif isinstance(event, Turn) and event.final:
                turns.append(event)

    done = 0
    for samples in chunks:
        keep(engine.feed(samples))
        done += len(samples)
        if progress is not None:
            progress(done)
    keep(engine.flush())
    return turns, regions


__all__ = ["Event", "FILE_PASSES", "StreamingDiarizer", "chunked", "diarize_array",
           "diarize_chunks", "run_chunks", "run_engine", "run_passes", "usable_locals"]
