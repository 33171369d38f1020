"""The embedded preset: Silero VAD + GE2E voice embeddings, no download needed.

Per stream, audio is processed once: VAD probabilities every 32 ms, a mel spectrogram
every 10 ms, and one GE2E embedding per sliding window (``window`` seconds, a new one
every ``hop`` seconds) over the speech frames of that window. For each rolling buffer, the
windows inside it are clustered into local speakers (agglomerative, average linkage); a
cluster whose windows fall into two tight pitch groups far apart (or looser ones, far
apart for their width) is two voices and is split (GE2E holds some distinct voices closer
than one voice's windows, while one real voice's pitch moves more than such groups allow;
see :func:`streamer.pitch.two_voices`).
A cluster is also split between two of the stream's known speakers (given by the engine)
when its windows fall clearly on either side of them (:meth:`EmbeddedStream._split_known`):
voices the stream has already told apart stay apart even where one buffer's clustering
would merge them.
A frame belongs to the local speakers of the windows that cover it, and it is speech
where the VAD says so and its energy lies above the stream's background (the VAD's
probability stays up for a while after each phrase; see :mod:`streamer.models.noisefloor`;
windows are embedded over the VAD's own speech frames). A local speaker's embedding is
the mean of its windows' embeddings. The pitch track (every 10 ms) also goes to the
engine with each buffer, one value per frame (the median of its voiced estimates), none
for the frames of a window that was folded into a cluster (it may hold another voice).

GE2E embeddings are compared as they are (cosine). They are non-negative, so distances
between any two voices are small (same speaker ~0.2, different ~0.35 on 1.5 s windows):
the thresholds below are tuned for that scale on ``../shared/eval``. An optional ``mean``
is subtracted first if given (centring did not help on that data).
"""
from __future__ import annotations

import base64
import binascii
import math

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from streamer.linalg import LINKAGES, linkage_clusters
from streamer.models.base import BufferAnalysis, FrameTiming
from streamer.models.ge2e import HOP as MEL_HOP
from streamer.models.calls import ModelCall, Models, Steps
from streamer.models.ge2e import (N_FFT, N_MELS, MelSpectrogram, OnnxVoiceEncoder, VoiceEncoder,
                                  volume_gain)
from streamer.models.silero import CHUNK as VAD_CHUNK
from streamer.models.silero import SileroVad
from streamer.models.noisefloor import BLOCK as FLOOR_BLOCK
from streamer.models.noisefloor import NoiseFloor, chunk_energies
from streamer.audio import SAMPLE_RATE
from streamer.pitch import HOP as PITCH_HOP
from streamer.pitch import PitchTrack, pitch_of, two_voices


@dataclass(frozen=True)
class EmbeddedSettings:
    """Tuned settings of the embedded preset.

    Attributes:
        window: Length of the audio each GE2E embedding sees, in seconds.
        hop: Time between two windows, in seconds.
        min_speech: A window is embedded only if it holds at least this many seconds of
            speech (only its speech frames are fed to the encoder).
        local_threshold: Cosine distance at which window clusters stop merging inside a
            buffer.
        max_local: Most local speakers per buffer.
        min_windows: Fewest windows a cluster needs to be a local speaker.
        vad_threshold: Silero probability from which a frame is speech (the stream's
            ``speech_threshold`` unless it sets one). Low, because the VAD's hangover
            after each phrase is trimmed at the background level (``floor_margin``).
        window_threshold: Silero probability from which a frame is fed to its windows'
            GE2E embeddings (and counts towards ``min_speech``): the window clustering's
            thresholds are tuned on embeddings of these frames.
        linkage: Agglomerative linkage of the window clustering (scipy method name).
        split_gap, split_spread: A window cluster is split in two when its windows' pitch
            medians form two groups whose means are ``split_gap`` semitones apart or
            more, each within ``split_spread`` semitones (standard deviation); 0
            ``split_gap`` never splits.
        split_separation: Also split where the two groups are looser (up to
            :data:`streamer.pitch.WIDE_SPREAD`) but their means lie ``split_gap`` and
            this many times the sum of their spreads apart (a cluster that holds three
            voices); 0 asks for tight groups only.
        split_voiced: Seconds of voiced frames a window needs for its pitch to count.
        known_split: A window cluster is split between two known speakers of the stream
            when at least ``min_windows`` of its windows lie nearer each, and each group
            lies on average at least this fraction of the two speakers' distance nearer
            its own speaker (see :meth:`EmbeddedStream._split_known`); 0 never splits.
        floor_margin: A VAD frame whose energy is less than this many dB above the
            stream's background is not speech, whatever the VAD says (its hangover after
            each phrase; see :mod:`streamer.models.noisefloor`); 0 keeps every frame the
            VAD finds. Windows are embedded over the VAD's own speech frames.
        vad_offset: Hysteresis of the speech decision, as a fraction of the speech
            threshold: a run of frames whose probability stays at or above this fraction
            of it is speech as a whole once one of its frames reaches the threshold, on
            both sides of that frame (:func:`speech_runs`). Soft onsets and endings of
            phrases that the VAD only half believes are kept, and stray frames at that
            level away from any phrase are not. 1 turns it off.
    """

    window: float = 1.5
    hop: float = 0.5
    min_speech: float = 0.8
    local_threshold: float = 0.31
    max_local: int = 4
    min_windows: int = 3
    vad_threshold: float = 0.1
    window_threshold: float = 0.15
    linkage: str = "average"
    split_gap: float = 4.0
    split_spread: float = 1.0
    split_separation: float = 3.0
    split_voiced: float = 0.3
    known_split: float = 0.3
    floor_margin: float = 3.0
    vad_offset: float = 0.5

    def __post_init__(self) -> None:
        if not 0.5 <= self.window <= 6.0:
            raise ValueError(f"window must be between 0.5 and 6 s, got {self.window}")
        if not 0.1 <= self.hop <= self.window:
            raise ValueError(f"hop must be between 0.1 s and window, got {self.hop}")
        if not 0.1 <= self.min_speech <= self.window:
            raise ValueError(f"min_speech must be between 0.1 s and window, got {self.min_speech}")
        if not 0.0 < self.local_threshold < 2.0:
            raise ValueError(f"local_threshold must be in (0, 2), got {self.local_threshold}")
        if not 1 <= self.max_local <= 10:
            raise ValueError(f"max_local must be between 1 and 10, got {self.max_local}")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if not 0.0 < self.window_threshold < 1.0:
            raise ValueError(f"window_threshold must be in (0, 1), got {self.window_threshold}")
        if not (0.0 <= self.split_gap and 0.0 < self.split_spread
                and 0.0 < self.split_voiced <= self.window):
            raise ValueError("split_gap must be >= 0, split_spread > 0 and split_voiced in "
                             f"(0, window], got {self.split_gap}, {self.split_spread}, "
                             f"{self.split_voiced}")
        if not 0.0 <= self.split_separation <= 20.0:
            raise ValueError(f"split_separation must be between 0 and 20, got "
                             f"{self.split_separation}")
        if not 0.0 <= self.known_split <= 1.0:
            raise ValueError(f"known_split must be between 0 and 1, got {self.known_split}")
        if not 0.0 < self.vad_offset <= 1.0:
            raise ValueError(f"vad_offset must be in (0, 1], got {self.vad_offset}")
        if not 0.0 <= self.floor_margin <= 30.0:
            raise ValueError(f"floor_margin must be between 0 and 30 dB, got {self.floor_margin}")
        if self.linkage not in LINKAGES:
            raise ValueError(f"linkage must be average, complete, single or weighted, "
                             f"got {self.linkage!r}")


#: Fewest windows in each of the two pitch groups of a split.
SPLIT_LEAST = 2


def _pack(values: np.ndarray) -> str:
    """float32 values as base64 (little-endian): exact, and a quarter of their JSON."""
    return base64.b64encode(np.asarray(values, "<f4").reshape(-1).tobytes()).decode()


def _unpack(text: Any) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError("values must be base64 text")
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError("values must be float32")
    return np.frombuffer(raw, "<f4").astype(np.float64)


def speech_runs(probs: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Speech frames of a track of VAD ``probs`` by hysteresis: each run of frames at
    or above ``offset`` that holds a frame at or above ``onset`` (``offset <= onset``).
    Unlike a causal onset/offset binarizer, the run's frames before its first frame at
    ``onset`` are speech too: a phrase's soft start counts as its soft end does."""
    probs = np.asarray(probs)
    high = probs >= onset
    if offset >= onset or not high.any():
        return high
    low = probs >= offset  # holds every frame of ``high``
    edges = np.diff(np.concatenate([[0], low.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    # Between one run's start and the next's, only the run's own frames can be high.
    kept = np.add.reduceat(high.astype(np.int64), starts) > 0
    marks = np.zeros(len(probs) + 1, np.int64)
    marks[starts[kept]] += 1
    marks[ends[kept]] -= 1
    return np.cumsum(marks)[:-1] > 0


class EmbeddedFrontend:
    """Shared, read-only Silero VAD and GE2E encoder; one :class:`EmbeddedStream` per
    stream."""

    name = "embedded"
    sample_rate = SAMPLE_RATE
    chunk_duration = 10.0
    frame_step = SileroVad.frame_step
    default_delta_new = 0.22
    #: GE2E similarities run high between any two voices: a speaker is named only when
    #: its centroid is this close to a voiceprint (see scripts/identification.py).
    default_identity_threshold = 0.92
    #: GE2E holds some distinct voices closer than one voice's turns; pitch sets them
    #: apart (see streamer.pitch).
    default_pitch_weight = 1.0
    #: Every buffer counts alike when averaged: its older frames have full context here.
    aggregation_window = "uniform"
    #: A voice activity model and one voice per window: no overlapped speech.
    detects_overlap = False

    def __init__(self, settings: EmbeddedSettings | None = None, vad: SileroVad | None = None,
                 encoder: VoiceEncoder | OnnxVoiceEncoder | None = None,
                 mean: np.ndarray | None = None, backend: str = "torch"):
        """``backend="onnx"`` runs GE2E in ONNX Runtime (:class:`OnnxVoiceEncoder`, the
        ``onnx`` extra), a third faster on one stream's window; ``encoder`` (a torch one)
        is then the network it exports."""
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.settings = settings or EmbeddedSettings()
        self.default_speech_threshold = self.settings.vad_threshold
        self.vad = vad or SileroVad()
        self.encoder = encoder or VoiceEncoder()
        if backend == "onnx" and not isinstance(self.encoder, OnnxVoiceEncoder):
            self.encoder = OnnxVoiceEncoder(self.encoder)
        self.backend = "onnx" if isinstance(self.encoder, OnnxVoiceEncoder) else "torch"
        self.mean = (np.zeros(VoiceEncoder.dimension, np.float32) if mean is None
                     else np.asarray(mean, np.float32))
        self.mel = MelSpectrogram()
        self.max_frames = int(round(self.settings.window * SAMPLE_RATE)) // MEL_HOP

    @property
    def sample_alignment(self) -> int:
        """VAD chunks and GE2E windows both start on multiples of this."""
        return math.lcm(VAD_CHUNK, int(round(self.settings.hop * SAMPLE_RATE)))

    @property
    def models(self) -> Models:
        return {"vad": self.vad.recurrent, "ge2e": self.encoder.embed_padded}

    def describe(self) -> dict[str, Any]:
        return {
            "preset": self.name,
            "segmentation": "silero-vad (packaged weights) + clustering of GE2E windows",
            "embedding": "GE2E voice encoder (resemblyzer packaged weights)",
            "sample_rate": self.sample_rate,
            "chunk_duration": self.chunk_duration,
            "frame_step": self.frame_step,
            "embedding_dimension": VoiceEncoder.dimension,
            "window": self.settings.window,
            "hop": self.settings.hop,
            "backend": self.backend,
        }

    def stream(self, config: Any) -> "EmbeddedStream":
        return EmbeddedStream(self, config)

    def embed(self, mels: np.ndarray, gain: float) -> np.ndarray:
        """Normalised embedding of speech mel frames ``(frames, 40)``."""
        return self.finish_embeddings(self.encoder.embed_padded(
            *self.encoder_call([mels], [gain]).args))[0]

    def encoder_call(self, mels: list[np.ndarray], gains: list[float]) -> ModelCall:
        """The GE2E call for windows of speech mel frames (``(frames, 40)`` each, at most
        one window's worth used) at their volume gains; its result goes through
        :meth:`finish_embeddings`. Windows are padded to one length, so that the windows
        of many streams make one batch."""
        padded = np.zeros((len(mels), self.max_frames, N_MELS), np.float32)
        counts = np.zeros(len(mels), np.int64)
        for row, (frames, gain) in enumerate(zip(mels, gains)):
            counts[row] = min(len(frames), self.max_frames)
            padded[row, :counts[row]] = frames[:counts[row]] * gain ** 2
        return ModelCall("ge2e", (padded, counts))

    def finish_embeddings(self, raw: np.ndarray) -> np.ndarray:
        """GE2E outputs ``(windows, 256)`` -> the embeddings the preset compares."""
        centred = np.asarray(raw, np.float32) - self.mean
        return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-8)


class Recording:
    """The model outputs of one stream of the embedded preset, for another pass over the
    same audio (:meth:`EmbeddedStream.record`, :meth:`EmbeddedStream.replay`): VAD
    probabilities and background marks per VAD chunk, window embeddings and pitch per
    window end sample."""

    def __init__(self) -> None:
        self._probs: list[np.ndarray] = []
        self._quiet: list[np.ndarray] = []
        self._joined: tuple[np.ndarray, np.ndarray] | None = None
        self.windows: dict[int, np.ndarray] = {}
        self.window_pitch: dict[int, float] = {}

    def add_chunks(self, probs: np.ndarray, quiet: np.ndarray) -> None:
        self._probs.append(np.asarray(probs, np.float32))
        self._quiet.append(np.asarray(quiet, bool))
        self._joined = None

    def chunks(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and marks of VAD chunks ``first`` to ``last`` (excluded).

        Raises:
            ValueError: the recording does not hold them (another audio)."""
        if self._joined is None:
            self._joined = (np.concatenate([np.zeros(0, np.float32), *self._probs]),
                            np.concatenate([np.zeros(0, bool), *self._quiet]))
            self._probs, self._quiet = [self._joined[0]], [self._joined[1]]
        probs, quiet = self._joined
        if last > len(probs):
            raise ValueError(f"the recording holds {len(probs)} VAD chunks, not {last}: "
                             "it comes from other audio")
        return probs[first:last], quiet[first:last]


class EmbeddedStream:
    """Per-stream state of the embedded front end: VAD state, mel frames and window
    embeddings of the audio still in reach of the rolling buffer."""

    def __init__(self, frontend: EmbeddedFrontend, config: Any):
        self.frontend = frontend
        self.settings = frontend.settings
        self.threshold = config.speech_threshold
        self.vad_state = frontend.vad.new_state()
        self.probs = np.zeros(0, np.float32)  # one per 32 ms VAD frame, from frame
        self.probs_start = 0  # index self.probs_start on
        self.quiet = np.zeros(0, bool)  # per VAD frame as probs: at the background level
        self.floor = NoiseFloor(self.settings.floor_margin)
        self.audio = np.zeros(0, np.float32)  # kept from sample index self.audio_start
        self.audio_start = 0
        self.received = 0
        self.mels = np.zeros((0, 40), np.float32)  # self.mels[i] is centred on
        self.mel_start = 0  # sample (mel_start + i) * 160
        self.hop_samples = int(round(self.settings.hop * SAMPLE_RATE))
        self.window_samples = int(round(self.settings.window * SAMPLE_RATE))
        # Pitch estimates a window needs for its pitch to count.
        self.window_voiced = int(self.settings.split_voiced * SAMPLE_RATE / PITCH_HOP)
        self.next_window = 1  # window k ends at sample k * hop_samples
        self.windows: dict[int, np.ndarray] = {}  # end sample -> embedding (valid only)
        self.window_pitch: dict[int, float] = {}  # end sample -> median pitch (NaN: none)
        self.pitch = PitchTrack()
        # What a resumed stream takes over from the stream it continues (see continue_from).
        self._carried: dict[str, Any] | None = None
        # What this stream keeps of its model outputs for another pass over the same
        # audio, or takes from the pass before (see record and replay).
        self._recording: Recording | None = None
        self._replay: Recording | None = None

    # -------------------------------------------------------------- passes
    def record(self) -> None:
        """Keep every VAD probability, background mark and window embedding (and window
        pitch) from here on, for a stream over the same audio (:meth:`recording`):
        about 2 kB per second of audio. Call it before any audio."""
        if self.received:
            raise RuntimeError("record() comes before any audio")
        self._recording = Recording()

    def recording(self) -> "Recording | None":
        """What :meth:`record` kept, or what this stream replays; ``None``: neither."""
        return self._replay or self._recording

    def replay(self, recording: "Recording") -> None:
        """Take the VAD's and the window encoder's outputs from ``recording`` (another
        stream's over the same audio, fed in the same steps) instead of running the
        models: a file's second pass costs the clustering, not the models. The output is
        the same as with the models run again. Call it before any audio."""
        if self.received:
            raise RuntimeError("replay() comes before any audio")
        self._replay = recording

    # -------------------------------------------------------------- resume
    def resume_state(self) -> dict[str, Any]:
        """What a resumed stream primed with this one's audio context needs besides it to
        analyse that audio as this one did: the VAD's recurrent state now, and the VAD
        probabilities this stream still holds (from its VAD chunk ``probs_from``).
        Silero's recurrent state remembers for many seconds, so a VAD run afresh over the
        context would not give the same probabilities; and the background level now, with
        the frames it marked (:mod:`streamer.models.noisefloor`). JSON-ready."""
        history, level, phase = self.floor.state()
        return {"samples": int(self.received), "probs_from": int(self.probs_start),
                "floor_level": level, "floor_phase": phase,
                **{key: _pack(values) for key, values in (
                    ("probs", self.probs), ("hidden", self.vad_state.hidden),
                    ("cell", self.vad_state.cell), ("quiet", self.quiet),
                    ("floor", history))}}

    def continue_from(self, carried: Any, origin: int) -> None:
        """Continue the stream whose :meth:`resume_state` is ``carried``; this stream's
        sample 0 is that stream's sample ``origin`` (a multiple of the VAD chunk: the
        start of the context it is primed with). The VAD probabilities it holds replace
        those computed over the context, and its recurrent state takes over where it was
        taken. The background level takes over there too; a state saved before the
        level was carried (no ``floor``) starts it afresh.

        Raises:
            ValueError: ``carried`` is not a state of this front end."""
        try:
            cut, first = carried["samples"], carried["probs_from"]
            probs, hidden, cell = (_unpack(carried[key]) for key in ("probs", "hidden", "cell"))
            floor = NoiseFloor(self.settings.floor_margin)
            if "floor" in carried:
                quiet = _unpack(carried["quiet"])
                floor.restore(_unpack(carried["floor"]), carried["floor_level"],
                              carried["floor_phase"])
            else:
                quiet = np.zeros(len(probs))
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise ValueError(f"the VAD state does not fit: {error}") from None
        hidden_size = self.vad_state.hidden.size
        if type(cut) is not int or type(first) is not int or first < 0 or probs.ndim != 1 \
                or (first + len(probs)) * VAD_CHUNK > cut \
                or not ((probs >= 0) & (probs <= 1)).all() or hidden.shape != (hidden_size,) \
                or quiet.shape != probs.shape or not np.isin(quiet, (0.0, 1.0)).all() \
                or cell.shape != (hidden_size,) or not np.isfinite(hidden).all() \
                or not np.isfinite(cell).all() or origin % VAD_CHUNK or origin > cut:
            raise ValueError("the VAD state does not fit")
        if "floor" not in carried:  # measured afresh, on the same block grid
            floor.phase = cut // VAD_CHUNK % FLOOR_BLOCK
        self._carried = {"first": first - origin // VAD_CHUNK, "probs": probs.astype(np.float32),
                         "quiet": quiet.astype(bool), "floor": floor,
                         "end": cut - origin,
                         "hidden": hidden.astype(np.float32).reshape(self.vad_state.hidden.shape),
                         "cell": cell.astype(np.float32).reshape(self.vad_state.cell.shape)}

    def _vad(self, samples: np.ndarray) -> Steps[tuple[np.ndarray, np.ndarray]]:
        """VAD probabilities of the chunks ``samples`` complete, and which of them lie at
        the background level (:meth:`_at_floor`). A resumed stream takes the carried
        probabilities and marks over its own up to the point where the carried recurrent
        state was taken, and that state and the carried background level from there."""
        done = self.probs_start + len(self.probs)  # index of the first new chunk
        carried = self._carried
        if carried is None:
            probs = yield from self.frontend.vad.process_steps(self.vad_state, samples)
            return probs, self._at_floor(probs, done)
        before = max(0, min(len(samples), carried["end"] - self.received))
        probs = np.array((yield from self.frontend.vad.process_steps(self.vad_state,
                                                                     samples[:before])))
        quiet = self._at_floor(probs, done)
        lo = max(carried["first"], done)
        hi = min(carried["first"] + len(carried["probs"]), done + len(probs))
        if hi > lo:
            taken = slice(lo - carried["first"], hi - carried["first"])
            probs[lo - done:hi - done] = carried["probs"][taken]
            quiet[lo - done:hi - done] = carried["quiet"][taken]
        if self.received + before < carried["end"]:
            return probs, quiet
        self.vad_state.hidden, self.vad_state.cell = carried["hidden"], carried["cell"]
        self.floor = carried["floor"]
        self._carried = None
        if before == len(samples):
            return probs, quiet
        later = yield from self.frontend.vad.process_steps(self.vad_state, samples[before:])
        return (np.concatenate([probs, later]),
                np.concatenate([quiet, self._at_floor(later, done + len(probs))]))

    def _at_floor(self, probs: np.ndarray, first: int) -> np.ndarray:
        """Which of the chunks from index ``first`` on (VAD ``probs``, audio received)
        lie at the stream's background level."""
        start = first * VAD_CHUNK - self.audio_start
        audio = self.audio[start:start + len(probs) * VAD_CHUNK]
        return self.floor.trim(chunk_energies(audio, VAD_CHUNK), np.asarray(probs))

    # -------------------------------------------------------------- incremental state
    def _take_new(self, buffer: np.ndarray, start: float) -> Steps[int]:
        end = int(round(start * SAMPLE_RATE)) + len(buffer)
        new = end - self.received
        if new > 0:
            samples = buffer[len(buffer) - min(new, len(buffer)):]
            # The audio first: the VAD's chunks are measured on it (_at_floor).
            self.audio = np.concatenate([self.audio, samples])
            if self._replay is not None:
                done = self.probs_start + len(self.probs)
                probs, quiet = self._replay.chunks(done, end // VAD_CHUNK)
            else:
                probs, quiet = yield from self._vad(samples)
                if self._recording is not None:
                    self._recording.add_chunks(probs, quiet)
            self.probs = np.concatenate([self.probs, probs])
            self.quiet = np.concatenate([self.quiet, quiet])
            self.pitch.push(samples)
            self.received = end
        if self._replay is None:  # mel frames feed only the window encoder
            self._update_mels()
        return end

    def _update_mels(self) -> None:
        half = N_FFT // 2
        first = self.mel_start + len(self.mels)
        last = (self.received - half) // MEL_HOP  # frames whose right edge has arrived
        if last < first:
            return
        lo = first * MEL_HOP - half
        hi = last * MEL_HOP + half
        pad_left = max(0, self.audio_start - lo)
        segment = self.audio[max(lo - self.audio_start, 0): hi - self.audio_start]
        segment = np.pad(segment, (pad_left, 0))
        self.mels = np.concatenate([self.mels, self.frontend.mel.frames(segment)])

    def _new_stops(self, end: int) -> Iterator[int]:
        """End samples of the windows not yet looked at that end by ``end``, in order."""
        while self.next_window * self.hop_samples <= end:
            self.next_window += 1
            yield (self.next_window - 1) * self.hop_samples

    def _embed_windows(self, end: int) -> Steps[None]:
        """Embeds the windows that end by ``end``: all of them in one model call."""
        stops, mels, gains = [], [], []
        if self._replay is not None:
            for stop in self._new_stops(end):
                if stop in self._replay.windows:
                    self.windows[stop] = self._replay.windows[stop]
                    self.window_pitch[stop] = self._replay.window_pitch[stop]
            return
        for stop in self._new_stops(end):
            start = max(0, stop - self.window_samples)
            lo_vad, hi_vad = start // VAD_CHUNK, stop // VAD_CHUNK
            speech = self.probs[lo_vad - self.probs_start:hi_vad - self.probs_start]
            speech = speech >= self.settings.window_threshold
            if speech.sum() * VAD_CHUNK < self.settings.min_speech * SAMPLE_RATE:
                continue
            mel_index = np.arange(start // MEL_HOP,
                                  min(stop // MEL_HOP, self.mel_start + len(self.mels)))
            keep = speech[np.clip(mel_index * MEL_HOP // VAD_CHUNK - lo_vad, 0,
                                  len(speech) - 1)]
            frames = self.mels[mel_index[keep] - self.mel_start]
            if len(frames) == 0:
                continue
            audio = self.audio[start - self.audio_start: stop - self.audio_start]
            self.window_pitch[stop] = pitch_of(
                self.pitch.at(np.arange(start // PITCH_HOP, stop // PITCH_HOP)),
                self.window_voiced)[0]
            stops.append(stop)
            mels.append(frames)
            gains.append(volume_gain(audio))
        if stops:
            raw = yield self.frontend.encoder_call(mels, gains)
            embedded = dict(zip(stops, self.frontend.finish_embeddings(raw)))
            self.windows.update(embedded)
            if self._recording is not None:
                self._recording.windows.update(embedded)
                self._recording.window_pitch.update(
                    (stop, self.window_pitch[stop]) for stop in stops)

    def _forget(self, buffer_start: int) -> None:
        keep_from = max(0, buffer_start - self.window_samples - N_FFT)
        if keep_from > self.audio_start:
            self.audio = self.audio[keep_from - self.audio_start:]
            self.audio_start = keep_from
            drop = keep_from // MEL_HOP - self.mel_start
            if drop > 0:
                self.mels = self.mels[drop:]
                self.mel_start += drop
            # later windows start after keep_from, later buffers too
            drop = keep_from // VAD_CHUNK - self.probs_start
            if drop > 0:
                self.probs = self.probs[drop:]
                self.quiet = self.quiet[drop:]
                self.probs_start += drop
            self.pitch.forget(keep_from // PITCH_HOP)
        for stop in [s for s in self.windows if s < buffer_start]:
            del self.windows[stop]
            del self.window_pitch[stop]  # kept for exactly the windows embedded

    # -------------------------------------------------------------- per buffer
    def analyze(self, buffer: np.ndarray, start: float, speakers: np.ndarray | None = None
                ) -> Steps[BufferAnalysis]:
        end = yield from self._take_new(buffer, start)
        yield from self._embed_windows(end)
        begin = max(0, end - len(buffer))
        self._forget(begin)
        first, last = int(np.ceil(begin / VAD_CHUNK)), end // VAD_CHUNK
        held = slice(first - self.probs_start, last - self.probs_start)
        # Speech is what the VAD finds above the background level, in runs (speech_runs).
        probs = np.where(self.quiet[held], np.float32(0), self.probs[held])
        speech = speech_runs(probs, self.threshold, self.threshold * self.settings.vad_offset)
        # The engine takes speech from the activity at or above the threshold: a frame of a
        # run is speech whole, whatever its own probability.
        probs = np.where(speech, np.float32(1.0), probs)
        timing = FrameTiming(first * VAD_CHUNK / SAMPLE_RATE - start, VAD_CHUNK / SAMPLE_RATE,
                             VAD_CHUNK / SAMPLE_RATE)
        stops = np.array(sorted(s for s in self.windows if s > begin), dtype=np.int64)
        if len(stops) == 0 or len(probs) == 0:
            return BufferAnalysis(np.zeros((len(probs), 0), np.float32),
                                  np.zeros((0, VoiceEncoder.dimension), np.float32), timing,
                                  probs)
        embeddings = np.stack([self.windows[s] for s in stops])
        labels, folded = self._cluster(embeddings,
                                       np.array([self.window_pitch[s] for s in stops]),
                                       speakers)
        count = labels.max() + 1
        centers = (np.arange(first, first + len(probs)) + 0.5) * VAD_CHUNK
        membership = self._membership(centers, stops, labels, count)
        activations = (membership * speech[:, None]).astype(np.float32)
        local = np.stack([embeddings[labels == k].mean(axis=0) for k in range(count)])
        local /= np.maximum(np.linalg.norm(local, axis=1, keepdims=True), 1e-8)
        # Frames near the buffer's end are seen only by windows that end early (they
        # look into the past only): trust them in proportion to their window coverage.
        confidence = np.clip((end - centers) / self.window_samples, 0.05, 1.0)
        pitch = self.pitch.over(centers, VAD_CHUNK)
        # A folded window may hold a neighbour's voice (it often straddles a change of
        # speaker), and a neighbour voiced more often would take over the median of the
        # local speaker it was folded into: the frames it covers give no pitch.
        pitch[self._covering(centers, stops[folded]).any(axis=1)] = np.nan
        return BufferAnalysis(activations, local.astype(np.float32), timing, probs, confidence,
                              pitch)

    def _cluster(self, embeddings: np.ndarray, pitch: np.ndarray,
                 speakers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Local speaker index of each window, and which windows were folded:
        agglomerative clustering; windows of clusters too small to be a speaker (often
        windows that straddle a turn change) are folded into the nearest large cluster;
        then clusters are split where their windows' ``pitch`` medians are two voices,
        and where they hold two of the known ``speakers``."""
        labels, folded = self._fold(embeddings)
        labels = self._split_voices(labels, pitch)
        if speakers is not None:
            labels = self._split_known(labels, embeddings, speakers)
        return labels, folded

    def _fold(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cluster index of each window, and which windows were folded into a cluster
        they were not clustered with."""
        if len(embeddings) == 1:
            return np.zeros(1, int), np.zeros(1, bool)
        labels = linkage_clusters(embeddings, self.settings.local_threshold, self.settings.linkage)
        sizes = np.bincount(labels)
        order = np.argsort(-sizes, kind="stable")
        big = [k for k in order[: self.settings.max_local] if sizes[k] >= self.settings.min_windows]
        kept = big or [order[0]]
        folded = ~np.isin(labels, kept)
        if folded.any():
            means = np.stack([embeddings[labels == k].mean(axis=0) for k in kept])
            nearest = np.argmax(embeddings @ means.T, axis=1)
            remap = {k: i for i, k in enumerate(kept)}
            return np.array([remap.get(k, nearest[i]) for i, k in enumerate(labels)]), folded
        remap = np.empty(len(sizes), int)
        remap[kept] = np.arange(len(kept))
        return remap[labels], folded

    def _split_each(self, labels: np.ndarray,
                    part: Callable[[np.ndarray], np.ndarray | None]) -> np.ndarray:
        """Each cluster for which ``part(members)`` (window indices) gives a mask of its
        members becomes two, the masked members the new one, up to ``max_local``
        clusters; ``None`` leaves the cluster whole."""
        labels = labels.copy()
        for cluster in range(labels.max() + 1):
            if labels.max() + 1 >= self.settings.max_local:
                break
            members = np.flatnonzero(labels == cluster)
            second = part(members)
            if second is not None:
                labels[members[second]] = labels.max() + 1
        return labels

    def _split_voices(self, labels: np.ndarray, pitch: np.ndarray) -> np.ndarray:
        """Each cluster whose windows' pitch shows two voices becomes two, up to
        ``max_local`` clusters (the windows without a pitch stay with the first)."""
        s = self.settings
        if s.split_gap <= 0:
            return labels
        return self._split_each(labels, lambda members: two_voices(
            pitch[members], s.split_gap, s.split_spread, SPLIT_LEAST, s.split_separation))

    def _split_known(self, labels: np.ndarray, embeddings: np.ndarray,
                     speakers: np.ndarray) -> np.ndarray:
        """Each cluster that holds two of the stream's known ``speakers`` (unit centroids,
        ``(speakers, dim)``) becomes two, up to ``max_local`` clusters.

        A cluster holds speakers a and b, the two that are nearest to most of its windows,
        when each is nearest to at least ``min_windows`` windows and the windows fall
        clearly on either side: on the axis from b to a, ``w·a - w·b``, the windows
        nearer a lie on average at least ``known_split`` × the speakers' distance
        ``1 - a·b`` on a's side, and those nearer b as far on b's side. Windows of two
        voices that the stream has told apart sit near ± that distance; windows of one
        voice that two speakers share (a voice counted twice) spread around 0, so such a
        cluster is left whole and does not keep the second speaker alive."""
        s = self.settings
        if s.known_split <= 0 or len(speakers) < 2:
            return labels
        similarity = embeddings @ speakers.T
        nearest = np.argmax(similarity, axis=1)

        def nearer_b(members: np.ndarray) -> np.ndarray | None:
            counts = np.bincount(nearest[members], minlength=len(speakers))
            a, b = np.argsort(-counts, kind="stable")[:2]
            if counts[b] < s.min_windows:
                return None
            side = similarity[members, a] - similarity[members, b]
            reach = s.known_split * (1.0 - float(speakers[a] @ speakers[b]))
            if side[side > 0].mean() >= reach and -side[side < 0].mean() >= reach:
                return side < 0
            return None

        return self._split_each(labels, nearer_b)

    def _covering(self, centers: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """``(frames, windows)``: whether the window ending at each of ``stops`` covers
        the frame centred on each of ``centers`` (samples)."""
        return (centers[:, None] <= stops[None, :]) \
            & (centers[:, None] >= stops[None, :] - self.window_samples)

    def _membership(self, centers: np.ndarray, stops: np.ndarray, labels: np.ndarray,
                    count: int) -> np.ndarray:
        window = self.window_samples
        covers = self._covering(centers, stops)
        nearest = np.argmin(np.abs(centers[:, None] - (stops[None, :] - window / 2)), axis=1)
        uncovered = ~covers.any(axis=1)
        covers[uncovered, nearest[uncovered]] = True
        # A window speaks most for the frames near its centre.
        distance = np.abs(centers[:, None] - (stops[None, :] - window / 2)) / (window / 2)
        weights = covers * np.clip(1.0 - distance, 0.05, 1.0)
        onehot = np.eye(count)[labels]  # (windows, count)
        votes = weights @ onehot
        return votes / votes.sum(axis=1, keepdims=True)
