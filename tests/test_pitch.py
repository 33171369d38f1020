"""Voice pitch as a tracking cue: the F0 tracker, the pitch statistics and penalty, and
an engine that tells apart two voices its embeddings cannot."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.clustering import CONTRAST_PERSISTENCE, STEADY_PITCH, CentroidMemory, pitch_precision
from streamer.config import StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.models.base import FrameTiming
from streamer.models.frontend import SegmentationEmbeddingFrontend
from streamer.pitch import (FRAME, HOP, MIN_SPREAD, MIN_VOICED, WIDE_LEAST, WIDE_SPREAD,
                            PitchTrack, difference_function, pitch_of, pitch_penalty,
                            two_voices, yin)

RATE = 16000


def voice(f0: float, seconds: float, vibrato: float = 0.0, seed: int = 0) -> np.ndarray:
    """A harmonic voice at ``f0`` Hz (five harmonics), its pitch moving by ``vibrato``
    semitones at 5 Hz."""
    t = np.arange(int(seconds * RATE)) / RATE
    semitones = vibrato * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0 * 2 ** (semitones / 12)) / RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.3 * wave / 2 + noise).astype(np.float32)


@pytest.mark.parametrize("f0", [80.0, 120.0, 210.0, 350.0])
def test_yin_finds_the_pitch_of_a_harmonic_voice(f0: float) -> None:
    estimates = yin(voice(f0, 1.0))
    voiced = estimates[np.isfinite(estimates)]
    assert len(voiced) > 0.9 * len(estimates)
    assert np.median(voiced) == pytest.approx(f0, rel=0.01)


def test_the_difference_function_is_the_direct_sum() -> None:
    frames = np.random.default_rng(3).normal(0, 0.3, (4, FRAME))
    frames[1] = voice(97.0, FRAME / RATE)
    difference = difference_function(frames)
    lags = difference.shape[1]
    width = FRAME - (lags - 1)
    direct = np.array([[((row[:width] - row[tau:tau + width]) ** 2).sum() for tau in range(lags)]
                       for row in frames])
    np.testing.assert_allclose(difference, direct, rtol=1e-9, atol=1e-9)


def test_yin_finds_no_pitch_in_noise_or_silence() -> None:
    noise = np.random.default_rng(1).normal(0, 0.3, RATE).astype(np.float32)
    assert np.isfinite(yin(noise)).mean() < 0.1
    assert not np.isfinite(yin(np.zeros(RATE, np.float32))).any()
    assert len(yin(np.zeros(100, np.float32))) == 0


def test_the_pitch_track_is_the_same_in_any_pieces() -> None:
    audio = np.concatenate([voice(110, 1.0), np.zeros(RATE // 2, np.float32),
                            voice(220, 1.0)])
    whole = PitchTrack()
    whole.push(audio)
    pieces = PitchTrack()
    for part in np.array_split(audio, [1, 700, 5000, 5001, 20000]):
        pieces.push(part)
    assert pieces.received == whole.received == len(audio)
    assert pieces.end == whole.end == (len(audio) - 400) // HOP + 1
    np.testing.assert_allclose(pieces.semitones, whole.semitones, equal_nan=True)
    # Estimate i is centred on sample i * HOP: 0.5 s in, the 110 Hz voice; 2.0 s in, 220.
    first, second = whole.at(np.array([50, 200]))
    assert second - first == pytest.approx(12.0, abs=0.1)
    whole.forget(100)
    assert whole.first == 100 and np.isnan(whole.at(np.array([50]))[0])
    assert whole.at(np.array([200]))[0] == pytest.approx(second)


def test_a_frames_pitch_is_the_median_of_the_voiced_estimates_it_holds() -> None:
    track = PitchTrack()
    nan = np.nan
    track.semitones = np.array([nan, 5.0, nan, nan, nan, nan, 1.0, 2.0, 9.0, 4.0, nan, 6.0])
    # 32 ms frames hold three estimates, centred on estimates 1, 4, 7 and 10.
    centres = np.array([1, 4, 7, 10]) * HOP
    np.testing.assert_array_equal(track.over(centres, 512), [5.0, nan, 2.0, 5.0])
    # The estimate at the centre alone leaves the last frame without a pitch.
    assert np.isnan(track.at(np.array([10]))[0])
    # Frames shorter than two estimates take the one at their centre.
    np.testing.assert_array_equal(track.over(centres, 270), track.at(centres // HOP))
    # Estimates not held (before the first kept, after the last) count as unvoiced.
    track.forget(2)
    assert np.isnan(track.over(np.array([HOP]), 512)[0])
    assert track.over(np.array([12 * HOP]), 512)[0] == 6.0


def test_pitch_of_needs_enough_voiced_frames() -> None:
    assert np.isnan(pitch_of(np.full(MIN_VOICED - 1, 3.0))[0])
    flat = np.concatenate([np.full(MIN_VOICED, 3.0), np.full(50, np.nan)])
    assert pitch_of(flat) == (3.0, MIN_SPREAD, float(MIN_VOICED))
    spread = pitch_of(np.random.default_rng(0).normal(0.0, 2.0, 4000))[1]
    assert spread == pytest.approx(2.0, rel=0.1)


def test_the_pitch_penalty_counts_only_beyond_the_margin() -> None:
    local = np.array([[0.0, 1.0], [2.0, 1.0], [10.0, 1.0], [np.nan, np.nan]])
    centroids = np.array([[0.0, 1.0], [np.nan, np.nan]])
    penalty = pitch_penalty(local, centroids, weight=0.5, margin=1.0)
    assert penalty.shape == (4, 2)
    assert penalty[0, 0] == 0.0  # the same pitch
    assert penalty[1, 0] == pytest.approx(0.5 * (2 / np.sqrt(2) - 1.0))
    assert penalty[2, 0] == pytest.approx(0.5 * (10 / np.sqrt(2) - 1.0))
    assert not penalty[3].any() and not penalty[:, 1].any()  # unknown pitch costs nothing
    assert not pitch_penalty(local, centroids, weight=0.0, margin=1.0).any()


def test_the_memory_opens_a_speaker_for_a_voice_of_another_pitch() -> None:
    same = np.eye(4)[:1]
    low, high = np.array([[0.0, 0.5, 200.0]]), np.array([[7.0, 0.5, 200.0]])
    with_pitch = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=0.2)
    assert with_pitch.assign(same, [True], pitch=low, firm=[True]).tolist() == [0]
    assert with_pitch.assign(same, [True], pitch=high, firm=[True]).tolist() == [1]
    assert with_pitch.assign(same, [True], pitch=low, firm=[True]).tolist() == [0]
    assert with_pitch.pitches()[:, 0].tolist() == [0.0, 7.0]
    without = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=0.0)
    for pitch in (low, high, low):
        assert without.assign(same, [True], pitch=pitch, firm=[True]).tolist() == [0]


def test_pitch_opens_a_speaker_only_for_a_firm_voice_at_a_steady_pitch() -> None:
    same = np.eye(4)[:1]
    low = np.array([[0.0, 0.5, 200.0]])
    # 7 semitones above the speaker: far beyond the margin in units of either spread.
    brief, lively = np.array([[7.0, 0.5, 200.0]]), np.array([[12.0, STEADY_PITCH + 1, 200.0]])
    memory = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=0.2)
    assert memory.assign(same, [True], pitch=low, firm=[True]).tolist() == [0]
    # Too short to count (not firm), or a pitch that moves as a lively voice's does: the
    # same embedding is no new speaker; its pitch keeps it off the speaker (unassigned).
    assert memory.assign(same, [True], pitch=brief, firm=[False]).tolist() == [-1]
    assert memory.assign(same, [True], pitch=brief).tolist() == [-1]
    assert memory.assign(same, [True], pitch=lively, firm=[True]).tolist() == [-1]
    assert len(memory) == 1
    # Firm at a steady pitch: another voice.
    assert memory.assign(same, [True], pitch=brief, firm=[True]).tolist() == [1]
    # An embedding beyond delta_new is a new speaker whatever its pitch.
    far = np.eye(4)[1:2]
    assert memory.assign(far, [True], pitch=lively, firm=[False]).tolist() == [2]


def test_a_speakers_pitch_taken_over_a_blend_of_voices_opens_no_speaker() -> None:
    """A speaker whose pitch spreads as no steady voice does (its first local speaker held
    part of another voice) says nothing of a new voice: a steady voice of its embedding
    and another pitch stays off it, and becomes no new speaker, where a speaker of steady
    pitch would have made it one."""
    same, other = np.eye(4)[:1], np.eye(4)[1:2]
    voice, unknown = np.array([[0.0, 0.5, 200.0]]), np.full((1, 3), np.nan)
    found = {}
    for spread in (0.5, STEADY_PITCH + 2):
        memory = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0,
                                persistence=2)
        memory.assign(same, [True], pitch=np.array([[9.0, spread, 200.0]]), firm=[True])
        memory.assign(other, [True], pitch=unknown, firm=[True])
        for _ in range(4):
            memory.assign(np.vstack([same, other]), [True, True],
                          pitch=np.vstack([voice, unknown]), firm=[True, True])
        found[spread] = len(memory)
    assert found == {0.5: 3, STEADY_PITCH + 2: 2}


def test_blended_local_speakers_do_not_pull_a_speakers_pitch_onto_another_voice() -> None:
    """A speaker's pitch weighs each local speaker by its precision (voiced frames over
    spread²): local speakers that blend two voices spread widely and count little, so
    the speaker keeps its own voice's pitch, and a steady voice 3.5 semitones above it
    that the embeddings hold close still becomes a speaker of its own. Weighed by frames
    alone, the blends would have pulled the speaker's median to 1 unit of spread from
    that voice, within the margin."""
    same = np.eye(4)[:1]
    close = np.array([[0.95, np.sqrt(1 - 0.95 ** 2), 0.0, 0.0]])  # 0.05 from it
    memory = CentroidMemory(delta_new=0.22, max_speakers=5, pitch_weight=1.0)
    for pitch in [[-28.0, 1.0, 200.0]] * 2 + [[-26.0, 2.0, 200.0]] * 4:
        assert memory.assign(same, [True], pitch=np.array([pitch]), firm=[True]).tolist() \
            == [0]
    assert pitch_precision(2.0, 200.0) == 50.0 and pitch_precision(0.1, 9.0) == 100.0
    median, spread = memory.pitches()[0]
    assert median == pytest.approx((2 * 200 * -28.0 + 4 * 50 * -26.0) / 600)
    assert spread == pytest.approx(np.sqrt((2 * 200 * 1.0 + 4 * 50 * 4.0) / 600))
    voice = np.array([[-24.5, 1.5, 200.0]])
    assert memory.assign(close, [True], pitch=voice, firm=[True]).tolist() == [1]


def test_a_speaker_opened_on_a_blend_displaces_no_voice_by_pitch() -> None:
    """Weighed by precision, a speaker whose first local speaker blended two voices
    looks as steady as its steadiest local speaker; over its frames it spreads as the
    blend did. A local speaker of its own embedding kept off it only by pitch is then no
    displaced voice, however many buffers in a row; against a speaker steady over all
    its frames, the same local speaker becomes a speaker of its own."""
    first = np.eye(4)[:1]
    second = np.array([[1.0, 0.47, 0.0, 0.0]]) / np.hypot(1.0, 0.47)  # 0.095 from first
    unknown = np.full((1, 3), np.nan)
    found = {}
    for history in ("blend", "steady"):
        memory = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0,
                                persistence=3)
        first_pitch = [-8.0, 5.0, 200.0] if history == "blend" else [-12.0, 1.0, 200.0]
        for pitch in (first_pitch, [-12.0, 1.0, 200.0]):
            memory.assign(first, [True], pitch=np.array([pitch]), firm=[True])
        assert memory.pitches()[0, 1] <= STEADY_PITCH  # steady by precision either way
        for _ in range(5):
            memory.assign(np.vstack([first, second]), [True, True],
                          pitch=np.vstack([unknown, [[-13.75, 1.0, 200.0]]]),
                          firm=[True, True])
        found[history] = (len(memory), memory.spread_over_frames()[0])
    assert found["blend"][0] == 1 and found["blend"][1] == pytest.approx(np.sqrt(13.0))
    assert found["steady"] == (2, pytest.approx(1.0))


def test_a_voice_whose_pitch_stands_apart_from_its_buffer_mate_opens_a_speaker_sooner(
        ) -> None:
    """A speaker opened on a blend of voices is not steady, so its own pitch tells none of
    its voices apart. When a buffer hears two of them as two firm local speakers at
    steady, distinct pitches, the one kept off the speaker is another voice however close
    GE2E holds it: it opens a speaker after CONTRAST_PERSISTENCE buffers. Two halves of
    one voice (the same pitch), or a lively local speaker beside it, do not."""
    first = np.eye(4)[:1]
    second = np.array([[1.0, 0.47, 0.0, 0.0]]) / np.hypot(1.0, 0.47)  # 0.095 from first

    def buffers(taker: list[float], other: list[float], count: int) -> list[int]:
        memory = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0,
                                persistence=8)
        # A long blend: unsteady by precision too, so the speaker's own pitch never
        # sets the other voice apart (see the test above for one that does).
        memory.assign(first, [True], pitch=np.array([[-16.0, 4.0, 1e5]]), firm=[True])
        speakers = []
        for _ in range(count):
            memory.assign(np.vstack([first, second]), [True, True],
                          pitch=np.array([taker, other]), firm=[True, True])
            speakers.append(len(memory))
            assert memory.pitches()[0, 1] > STEADY_PITCH
        return speakers

    assert CONTRAST_PERSISTENCE < 8
    opened = buffers([-12.0, 1.0, 200.0], [-20.0, 1.0, 200.0], CONTRAST_PERSISTENCE)
    assert opened == [1] * (CONTRAST_PERSISTENCE - 1) + [2]
    assert buffers([-12.0, 1.0, 200.0], [-12.3, 1.0, 200.0], 10) == [1] * 10
    assert buffers([-12.0, 3.0, 200.0], [-20.0, 1.0, 200.0], 10) == [1] * 10


def test_a_speakers_pitch_over_frames_survives_a_second_pass_and_a_resume() -> None:
    memory = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0)
    memory.assign(np.eye(4)[:1], [True], pitch=np.array([[-8.0, 5.0, 200.0]]), firm=[True])
    memory.assign(np.eye(4)[:1], [True], pitch=np.array([[-12.0, 1.0, 200.0]]), firm=[True])
    again = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0)
    again.load(memory.sums, memory.pitch_sums, memory.spread_sums,
               pitch_frames=memory.pitch_frame_sums)
    assert again.spread_over_frames()[0] == pytest.approx(np.sqrt(13.0))
    assert again.pitches() == pytest.approx(memory.pitches())
    # Without them (a state saved before they were kept), the precision-weighted spread.
    older = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0)
    older.load(memory.sums, memory.pitch_sums, memory.spread_sums)
    assert older.spread_over_frames()[0] == pytest.approx(memory.pitches()[0, 1])
    with pytest.raises(ValueError, match="pitch frame rows"):
        older.load(memory.sums, memory.pitch_sums, pitch_frames=[])


def test_a_lively_pitch_alone_does_not_displace_a_voice() -> None:
    """A local speaker that its pitch, moving as a lively voice's does, keeps off its own
    speaker is not another voice displaced by its buffer's other local speaker, however
    many buffers in a row; at a steady pitch, it is."""
    first = np.eye(4)[:1]
    second = np.array([[1.0, 0.65, 0.0, 0.0]]) / np.hypot(1.0, 0.65)  # 0.16 from first
    unknown = np.full((1, 3), np.nan)
    found = {}
    for spread in (STEADY_PITCH + 1, 0.5):
        memory = CentroidMemory(delta_new=0.3, max_speakers=5, pitch_weight=1.0,
                                persistence=3)
        memory.assign(first, [True], pitch=np.array([[0.0, 0.5, 200.0]]), firm=[True])
        memory.load(memory.sums + [second[0]], memory.pitch_sums + [np.zeros(3)])
        for _ in range(5):
            memory.assign(np.vstack([first, second]), [True, True],
                          pitch=np.vstack([[[9.0, spread, 200.0]], unknown]),
                          firm=[True, True])
        found[spread] = len(memory)
    assert found == {STEADY_PITCH + 1: 2, 0.5: 3}


class _TurnSegmentation:
    """Speech where the signal is loud; each stretch between pauses of a chunk is a
    local speaker of its own (it finds turns, not voices)."""

    sample_rate = RATE
    num_speakers = 4
    frames = FrameTiming(0.0, 0.02, 0.02)
    chunk_duration = 10.0

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        outputs = []
        for waveform in waveforms:
            blocks = waveform[: len(waveform) // 320 * 320].reshape(-1, 320)
            active = np.sqrt((blocks ** 2).mean(axis=1)) > 0.05
            starts = np.flatnonzero(active & ~np.concatenate([[False], active[:-1]]))
            out = np.zeros((len(active), self.num_speakers), np.float32)
            turn = np.cumsum(np.isin(np.arange(len(active)), starts)) - 1
            for slot in range(self.num_speakers):
                out[:, slot] = active & (turn % self.num_speakers == slot)
            outputs.append(out)
        return np.stack(outputs)


class _SameEmbedding:
    """One embedding for every voice: only pitch can tell them apart."""

    sample_rate = RATE
    dimension = 4

    def __call__(self, waveforms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (len(waveforms), 1))


def _pitch_only_frontend() -> SegmentationEmbeddingFrontend:
    return SegmentationEmbeddingFrontend(_TurnSegmentation(), _SameEmbedding(), name="same",
                                         delta_new=0.3, speech_threshold=0.5)


def test_the_engine_tells_apart_voices_of_different_pitch_that_embed_alike() -> None:
    frontend = _pitch_only_frontend()
    pause = np.zeros(RATE // 2, np.float32)
    turns = [voice(f0, 3.0, vibrato=0.5, seed=i) for i, f0 in enumerate([110, 165] * 3)]
    audio = np.concatenate([part for turn in turns for part in (turn, pause)])

    # Pitch is off by default with such a front end: the test turns it on.
    assert frontend.default_pitch_weight == 0.0
    found, engine = diarize_array(frontend, audio, StreamConfig(pitch_weight=1.0))
    by_turn = [{t.speaker for t in found if t.start < 3.5 * i + 2.5 and t.end > 3.5 * i + 0.5}
               for i in range(6)]
    assert all(len(labels) == 1 for labels in by_turn), by_turn
    labels = [labels.pop() for labels in by_turn]
    assert labels[0::2] == [labels[0]] * 3 and labels[1::2] == [labels[1]] * 3
    assert labels[0] != labels[1]
    assert len(engine.speakers()) == 2

    alike, engine = diarize_array(frontend, audio, StreamConfig(pitch_weight=0.0))
    assert {t.speaker for t in alike} == {"SPEAKER_00"} and len(engine.speakers()) == 1


def test_a_resumed_stream_keeps_its_speakers_pitch() -> None:
    frontend = _pitch_only_frontend()
    pause = np.zeros(RATE // 2, np.float32)
    audio = np.concatenate([voice(110, 3.0), pause, voice(165, 3.0, seed=1), pause])
    config = StreamConfig(pitch_weight=1.0)
    _, first = diarize_array(frontend, audio, config)
    state = first.state()
    assert [len(s["pitch"]) for s in state["speakers"]] == [3, 3]
    resumed = StreamingDiarizer(frontend, config)
    resumed.restore(state)
    turns = resumed.feed(np.concatenate([voice(165, 3.0, seed=2), pause])) + resumed.flush()
    finals = {t.speaker for t in turns if t.final}
    assert finals == {"SPEAKER_01"}
    # A state saved before pitch was kept still resumes, with the voices' pitch unknown.
    for speaker in state["speakers"]:
        del speaker["pitch"]
    StreamingDiarizer(frontend).restore(state)
    state["speakers"][0]["pitch"] = [1.0, float("nan"), 0.0]
    with pytest.raises(ValueError, match="pitch"):
        StreamingDiarizer(frontend).restore(state)


def test_two_voices_needs_two_tight_groups_far_apart() -> None:
    rng = np.random.default_rng(0)
    low, high = 50 + rng.normal(0, 0.4, 5), 56 + rng.normal(0, 0.4, 4)
    medians = np.concatenate([high[:2], low, high[2:], [np.nan]])
    higher = two_voices(medians, gap=4.0, spread=1.0, least=2)
    assert higher is not None
    assert higher.tolist() == [True, True] + [False] * 5 + [True, True, False]
    # One voice whose pitch moves with intonation: no split, whatever the gap.
    moving = 50 + rng.normal(0, 2.5, 12)
    assert two_voices(moving, gap=4.0, spread=1.0, least=2) is None
    # Too close, too few, or too loose.
    assert two_voices(np.array([50, 50.2, 52, 52.3]), 4.0, 1.0, 2) is None
    assert two_voices(np.array([50, 50.2, 56]), 4.0, 1.0, 2) is None
    assert two_voices(np.array([47, 50, 53, 60, 60.1]), 4.0, 1.0, 2) is None


def test_two_voices_takes_looser_groups_that_stand_far_apart_for_their_width() -> None:
    # Three voices in one cluster: the cut leaves two of them in the lower group, wider
    # than one voice but far from the third for that width.
    three = np.array([-30.0, -29.0, -29.0, -27.0, -27.0, -26.0]
                     + [-20.0] * 6 + [-19.0] * 5 + [-18.0] * 2)
    assert two_voices(three, 4.0, 1.0, 2) is None  # the lower group is not tight
    higher = two_voices(three, 4.0, 1.0, 2, separation=3.0)
    assert higher is not None and higher.tolist() == [False] * 6 + [True] * 13
    # A lively voice: its medians run on, whatever cut is tried.
    rng = np.random.default_rng(1)
    assert two_voices(-15 + rng.normal(0, 2.0, 30), 4.0, 1.0, 2, separation=3.0) is None
    # Two windows at the edge of a lively voice's range stand apart from the rest, but
    # a looser group needs WIDE_LEAST windows.
    edge = np.array([-16.0] * 5 + [-14.0, -13.0, -13.0, -11.0, -11.0, -8.0, -8.0])
    assert WIDE_LEAST > 2 and two_voices(edge, 4.0, 1.0, 2, separation=3.0) is None
    # Far apart, but not for their width, or wider than WIDE_SPREAD.
    near = np.array([-22.5, -21.0, -19.5, -17.5, -16.0, -14.5])  # spreads 1.2, 5 apart
    assert two_voices(near, 4.0, 1.0, 2, separation=3.0) is None
    assert two_voices(near, 4.0, 1.0, 2, separation=2.0) is not None
    loose = np.array([-33.0, -30.0, -27.0, -13.0, -10.0, -7.0])  # spreads 2.4, 20 apart
    assert WIDE_SPREAD < 2.4 and two_voices(loose, 4.0, 1.0, 2, separation=3.0) is None


@pytest.fixture(scope="module")
def embedded_stream():
    from streamer.models.embedded import EmbeddedFrontend

    frontend = EmbeddedFrontend()
    return frontend.stream(StreamConfig().resolve(10.0, 0.22, 0.15))


def test_the_embedded_preset_splits_a_window_cluster_of_two_pitches(embedded_stream) -> None:
    # Eight windows GE2E cannot tell apart: one cluster, until pitch shows two voices.
    embeddings = np.tile(np.eye(256, dtype=np.float32)[:1], (8, 1))
    embeddings[:, 1] = np.linspace(0, 0.01, 8)
    two = np.array([48.0, 48.3, 47.8, 54.9, 55.2, 48.1, 55.0, np.nan])
    labels, _ = embedded_stream._cluster(embeddings, two)
    assert len(set(labels[[0, 1, 2, 5]])) == 1 and len(set(labels[[3, 4, 6]])) == 1
    assert labels[0] != labels[3] and labels[7] == labels[0]
    one = np.array([48.0, 50.3, 46.8, 51.9, 53.2, 47.1, 49.0, np.nan])  # intonation
    assert set(embedded_stream._cluster(embeddings, one)[0]) == {0}


def test_a_voiceprint_keeps_its_voices_pitch_and_identification_weighs_it() -> None:
    """Two voices that embed alike: their voiceprints differ only in pitch, and a stream
    names each speaker after the print of its own pitch, not after whichever comes first."""
    from streamer.enrollment import enroll

    frontend = _pitch_only_frontend()
    frontend.default_pitch_weight = 1.0
    low = enroll(frontend, voice(110, 6.0, vibrato=0.5))
    high = enroll(frontend, voice(165, 6.0, vibrato=0.5, seed=1))
    assert low["pitch"]["median"] == pytest.approx(12 * np.log2(110 / 440), abs=0.3)
    assert high["pitch"]["median"] == pytest.approx(12 * np.log2(165 / 440), abs=0.3)
    assert low["vector"] == high["vector"]  # the embeddings cannot tell them apart

    pause = np.zeros(RATE // 2, np.float32)
    audio = np.concatenate([voice(165, 3.0, vibrato=0.5, seed=2), pause,
                            voice(110, 3.0, vibrato=0.5, seed=3), pause])
    # Only the low voice is enrolled: the high one, first to speak, stays anonymous.
    config = StreamConfig(known_speakers=[{"name": "low", "voiceprint": low}])
    turns, engine = diarize_array(frontend, audio, config)
    named = {(t.speaker, t.identity) for t in turns if t.final}
    assert named == {("SPEAKER_00", None), ("SPEAKER_01", "low")}, named
    both = StreamConfig(known_speakers=[{"name": "low", "voiceprint": low},
                                        {"name": "high", "voiceprint": high}])
    turns, engine = diarize_array(frontend, audio, both)
    assert {(t.speaker, t.identity) for t in turns if t.final} == {
        ("SPEAKER_00", "high"), ("SPEAKER_01", "low")}
    assert {s.label: s.identity for s in engine.speakers()} == {"SPEAKER_00": "high",
                                                               "SPEAKER_01": "low"}
    # Without pitch in the prints, the embeddings alone name the first speaker "low".
    blind = {k: v for k, v in low.items() if k != "pitch"}
    turns, _ = diarize_array(frontend, audio, StreamConfig(
        known_speakers=[{"name": "low", "voiceprint": blind}]))
    assert {(t.speaker, t.identity) for t in turns if t.final} == {
        ("SPEAKER_00", "low"), ("SPEAKER_01", None)}
