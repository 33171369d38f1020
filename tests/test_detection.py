"""Whole-file detection tasks (streamer.tasks.detection) with scripted fake models.

The fake models read the file time of each output frame from the audio itself (a ramp),
so a test chooses what the "model" outputs at every instant of the file, whatever chunk
it sits in, and can check where aggregation puts it.
"""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest

from streamer.errors import ConfigError
from streamer.models.base import FrameTiming
from streamer.tasks.detection import (PRESETS, POWERSET_DEFAULT, SILERO_DEFAULT, Binarization,
                                      BaselineTracks, binarization_for, binarize,
                                      detect_overlap, detect_speech, file_scores, hysteresis,
                                      map_to_baseline, overlap_scores, permute_powerset,
                                      resegment, segmentation_scores, speech_scores)

RATE = 16000
FRAME = 320  # 20 ms output frames
TENTHS = FrameTiming(0.0, 0.1, 0.1)  # frame i's middle at 0.05 + 0.1 i
MAPPING = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1],
                    [1, 1, 0], [1, 0, 1], [0, 1, 1]])


def ramp(seconds: float) -> np.ndarray:
    """Audio whose sample value encodes its time: 0.25 + t / 100 (0 is padding)."""
    return (0.25 + np.arange(round(seconds * RATE)) / RATE / 100).astype(np.float32)


def frame_times(waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """File time of each output frame's middle, and which frames are padding."""
    middles = waveform[FRAME // 2::FRAME][: len(waveform) // FRAME].astype(np.float64)
    return (middles - 0.25) * 100, middles < 0.2


def spans(*intervals: tuple[float, float]) -> Callable[[np.ndarray], np.ndarray]:
    """Script: 1.0 inside any interval, else 0.0."""
    def track(times: np.ndarray) -> np.ndarray:
        out = np.zeros(len(times))
        for start, end in intervals:
            out[(times >= start) & (times < end)] = 1.0
        return out
    return track


class ScriptedSegmentation:
    """Multilabel fake: speaker k's activation at time t is ``script[k](t)``; with
    ``shuffle``, each chunk lists its speakers in another order (as local speakers of a
    real model come in any order)."""

    sample_rate = RATE
    frames = FrameTiming(0.0, FRAME / RATE, FRAME / RATE)

    def __init__(self, script: list[Callable[[np.ndarray], np.ndarray]],
                 chunk_duration: float = 5.0, shuffle: bool = False):
        self.script, self.shuffle = script, shuffle
        self.chunk_duration = chunk_duration
        self.num_speakers = len(script)

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        out = []
        for waveform in waveforms:
            times, padding = frame_times(waveform)
            scores = np.stack([track(times) for track in self.script], axis=1)
            scores[padding] = 0.0
            turn = int(round((times[0] - 0.01) * 2)) if self.shuffle else 0  # chunk number
            out.append(np.roll(scores, turn, axis=1))
        return np.stack(out).astype(np.float32)


class ScriptedPowerset(ScriptedSegmentation):
    """Powerset fake (3 speakers, at most 2 at once): ``script[c](t)`` is the weight of
    powerset class ``c``, normalised to probabilities."""

    powerset = True
    mapping = MAPPING
    num_speakers = 3

    def raw(self, waveforms: np.ndarray) -> np.ndarray:
        weights = np.stack([np.stack([track(frame_times(w)[0]) for track in self.script],
                                     axis=-1) for w in waveforms]) + 1e-3
        return np.log(weights / weights.sum(-1, keepdims=True)).astype(np.float32)

    def to_multilabel(self, raw: np.ndarray) -> np.ndarray:
        return np.exp(raw) @ MAPPING

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        return self.to_multilabel(self.raw(waveforms)).astype(np.float32)


def same_regions(actual: list, expected: list, tolerance: float = 1e-9) -> bool:
    """Regions ``[(start, end)]`` or segments ``[(start, end, label)]`` equal within
    ``tolerance`` seconds (labels exactly)."""
    if len(actual) != len(expected):
        return False
    labels = [r[2:] for r in actual] == [r[2:] for r in expected]
    times = np.array([r[:2] for r in actual], float).reshape(-1, 2)
    wanted = np.array([r[:2] for r in expected], float).reshape(-1, 2)
    return labels and bool(np.allclose(times, wanted, atol=tolerance, rtol=0))


def silero_stub() -> SimpleNamespace:
    """What the embedded preset looks like to the tasks: a front end with a Silero VAD."""
    return SimpleNamespace(vad=SimpleNamespace(process=None, new_state=None))


# ---------------------------------------------------------------------- binarization
def test_hysteresis_rides_through_dips_above_offset_and_ends_below_it():
    scores = [0.1, 0.8, 0.6, 0.55, 0.65, 0.3, 0.1]
    assert hysteresis(scores, 0.7, 0.5).tolist() == [0, 1, 1, 1, 1, 0, 0]
    regions = binarize(np.array(scores), TENTHS, Binarization(0.7, 0.5))
    assert same_regions(regions, [(0.15, 0.55)])
    assert binarize(np.array([0.6, 0.65, 0.6]), TENTHS, Binarization(0.7, 0.5)) == []


def test_regions_open_at_the_start_and_at_the_end_close_on_the_outer_frames():
    regions = binarize(np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.9]), TENTHS, Binarization())
    assert same_regions(regions, [(0.05, 0.25), (0.45, 0.55)])


def _pyannote_loop(scores: np.ndarray, onset: float, offset: float) -> list[bool]:
    """Frame-by-frame transcription of the rule of pyannote's Binarize."""
    active = [scores[0] > onset]
    for y in scores[1:]:
        active.append((not y < offset) if active[-1] else y > onset)
    return active


@pytest.mark.parametrize("onset,offset", [(0.7, 0.3), (0.5, 0.5), (0.537, 0.724),
                                          (0.2, 0.9), (0.0, 1.0)])
def test_hysteresis_matches_pyannote_rule_even_with_offset_above_onset(onset, offset):
    rng = np.random.default_rng(7)
    for _ in range(20):
        scores = rng.random(rng.integers(1, 60))
        expected = _pyannote_loop(scores, onset, offset)
        assert hysteresis(scores, onset, offset).tolist() == expected


def test_gaps_are_filled_before_short_regions_are_removed():
    scores = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.1])  # (0.05, 0.25) and (0.35, 0.55)
    both = Binarization(0.5, 0.5, min_duration_on=0.3, min_duration_off=0.15)
    assert same_regions(binarize(scores, TENTHS, both), [(0.05, 0.55)])
    no_fill = Binarization(0.5, 0.5, min_duration_on=0.3, min_duration_off=0.1)
    assert binarize(scores, TENTHS, no_fill) == []  # a gap must be shorter than the limit
    only_fill = Binarization(0.5, 0.5, min_duration_off=0.15)
    assert same_regions(binarize(scores, TENTHS, only_fill), [(0.05, 0.55)])
    only_drop = Binarization(min_duration_on=0.2)
    assert same_regions(binarize(scores, TENTHS, only_drop), [(0.05, 0.25), (0.35, 0.55)])


@pytest.mark.parametrize("values,says", [
    ({"onset": 1.5}, "onset must be between 0 and 1"),
    ({"offset": -0.1}, "offset must be between 0 and 1"),
    ({"min_duration_on": -1}, "min_duration_on must be 0 or more"),
    ({"min_duration_off": math.inf}, "min_duration_off must be a finite number"),
    ({"onset": math.nan}, "onset must be a finite number"),
    ({"onset": True}, "onset must be a finite number"),
    ({"offset": "0.5"}, "offset must be a finite number"),
])
def test_bad_binarization_values_are_refused_by_name(values, says):
    with pytest.raises(ConfigError, match=says):
        Binarization(**values)


def test_overrides_replace_only_the_given_fields():
    base = Binarization(0.6, 0.4, 0.1, 0.2)
    assert base.with_overrides(onset=0.9, offset=None) == Binarization(0.9, 0.4, 0.1, 0.2)
    with pytest.raises(TypeError, match="threshold"):
        base.with_overrides(threshold=0.3)
    assert base.to_dict() == {"onset": 0.6, "offset": 0.4, "min_duration_on": 0.1,
                              "min_duration_off": 0.2}


# ---------------------------------------------------------------------- presets
def test_presets_hold_the_card_values():
    table = {(task, data): tuple(b.to_dict().values()) for task, sets in PRESETS.items()
             for data, b in sets.items()}
    assert table == {
        ("vad", "ami"): (0.684, 0.577, 0.181, 0.037),
        ("vad", "dihard3"): (0.767, 0.377, 0.136, 0.067),
        ("vad", "voxconverse"): (0.767, 0.713, 0.182, 0.501),
        ("osd", "ami"): (0.448, 0.362, 0.116, 0.187),
        ("osd", "dihard3"): (0.430, 0.320, 0.091, 0.144),
        ("osd", "voxconverse"): (0.587, 0.426, 0.337, 0.112),
        ("resegmentation", "ami"): (0.542, 0.527, 0.044, 0.705),
        ("resegmentation", "dihard3"): (0.592, 0.489, 0.163, 0.182),
        ("resegmentation", "voxconverse"): (0.537, 0.724, 0.410, 0.563),
    }


def test_preset_lookup_defaults_and_overrides():
    multilabel = ScriptedSegmentation([spans()] * 3)
    powerset = ScriptedPowerset([spans()] * 7)
    assert binarization_for("osd", multilabel, "ami") == PRESETS["osd"]["ami"]
    assert binarization_for("vad", multilabel, "voxconverse", onset=0.9,
                            min_duration_off=0.0) == Binarization(0.9, 0.713, 0.182, 0.0)
    assert binarization_for("resegmentation", multilabel) == \
        PRESETS["resegmentation"]["dihard3"]
    assert binarization_for("vad", powerset) == POWERSET_DEFAULT
    assert binarization_for("vad", silero_stub()) == SILERO_DEFAULT
    assert binarization_for("vad", silero_stub(), offset=0.2).offset == 0.2
    with pytest.raises(ConfigError, match="choose one of ami, dihard3, voxconverse"):
        binarization_for("vad", multilabel, "callhome")
    with pytest.raises(ConfigError, match="not the embedded preset's Silero VAD"):
        binarization_for("vad", silero_stub(), "ami")
    for task, what in (("osd", "overlapped speech"), ("resegmentation", "resegmentation")):
        with pytest.raises(ConfigError, match=f"embedded preset has no {what} model.*"
                                              "use the pyannote preset"):
            binarization_for(task, silero_stub())


# ---------------------------------------------------------------------- aggregation
def _time_model(**kwargs) -> ScriptedSegmentation:
    return ScriptedSegmentation([lambda times: times], **kwargs)


def test_grid_step_and_end_of_file_padding():
    scores = segmentation_scores(_time_model(), ramp(12.3))
    assert scores.step == pytest.approx(0.5) and scores.chunk_duration == 5.0
    assert scores.timing == FrameTiming(0.0, 0.02, 0.02)
    middles = scores.timing.center(np.arange(len(scores.data)))
    assert len(scores.data) == 615 and middles[-1] < 12.3 < middles[-1] + 0.02
    # every chunk saw each frame at its own time: any averaging gives that time back,
    # including the frames only the zero-padded last chunk reaches
    np.testing.assert_allclose(scores.data[:, 0], middles, atol=1e-3)


def test_a_signal_shorter_than_a_chunk_is_padded():
    scores = segmentation_scores(_time_model(), ramp(2.0), step=1.0)
    assert len(scores.data) == 100
    np.testing.assert_allclose(scores.data[:, 0], 0.01 + 0.02 * np.arange(100), atol=1e-3)


def _expected_mean(starts: np.ndarray, window: np.ndarray, frames: int) -> np.ndarray:
    total, weight = np.zeros(frames + 1000), np.zeros(frames + 1000)
    for start in starts:
        first = int(round(start / 0.02))
        total[first:first + len(window)] += window * start
        weight[first:first + len(window)] += window
    return total[:frames] / weight[:frames]


@pytest.mark.parametrize("window", ["hamming", "uniform"])
def test_overlapping_chunks_are_averaged_with_the_window(window):
    chunk_start = ScriptedSegmentation([lambda times: np.full_like(times, times[0] - 0.01)])
    scores = segmentation_scores(chunk_start, ramp(12.3), window=window)
    starts = 0.5 * np.arange(16)  # 15 whole chunks and a padded one from 7.5 s
    weights = np.hamming(250) if window == "hamming" else np.ones(250)
    np.testing.assert_allclose(scores.data[:, 0], _expected_mean(starts, weights, 615),
                               atol=1e-4)


def test_batches_and_steps_do_not_change_the_grid():
    one = segmentation_scores(_time_model(), ramp(9.0), batch_size=1, step=0.7)
    many = segmentation_scores(_time_model(), ramp(9.0), batch_size=64, step=0.7)
    np.testing.assert_array_equal(one.data, many.data)
    assert one.step == 0.7


@pytest.mark.parametrize("step", [0.0, -1.0, 5.5, math.nan])
def test_a_step_outside_the_chunk_is_refused(step):
    with pytest.raises(ConfigError, match="step must be more than 0"):
        segmentation_scores(_time_model(), ramp(6.0), step=step)


def test_a_pre_aggregation_hook_sees_chunk_outputs_and_grid_offsets():
    seen = []

    def hook(outputs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        seen.extend(offsets.tolist())
        return np.concatenate([outputs, 2 * outputs], axis=-1)

    scores = segmentation_scores(_time_model(), ramp(7.0), step=0.513, pre_aggregation=hook,
                                 labels=("t", "2t"))
    assert seen == [0, 26, 51, 77, 103]  # the frame nearest each chunk's start (0.02 s)
    assert scores.labels == ("t", "2t")
    np.testing.assert_allclose(scores.data[:, 1], 2 * scores.data[:, 0], rtol=1e-6)


def test_local_speakers_keep_their_column_from_chunk_to_chunk():
    script = [spans((0.0, 6.0)), spans((6.0, 12.0)), spans()]
    model = ScriptedSegmentation(script, shuffle=True)
    data = file_scores(model, ramp(12.0)).data
    early, late = data[:250].mean(axis=0), data[350:].mean(axis=0)
    assert sorted(early.round(2)) == [0, 0, 1] and sorted(late.round(2)) == [0, 0, 1]
    assert np.argmax(early) != np.argmax(late)
    unstitched = segmentation_scores(model, ramp(12.0), pre_aggregation=lambda o, _: o)
    assert unstitched.data[100:250].max() < 0.9  # the voice spread over all the slots


def test_raw_powerset_outputs_are_permuted_with_their_speakers():
    raw = np.log(np.arange(1, 8, dtype=float) / 28)[None]
    moved = permute_powerset(raw, np.array([2, 0, 1]), MAPPING)
    # new speaker 0 is old speaker 2: class {0} takes old class {2}, {0,1} takes {2,0}
    assert moved[0, 1] == raw[0, 3] and moved[0, 4] == raw[0, 5] and moved[0, 0] == raw[0, 0]
    assert sorted(moved[0]) == sorted(raw[0])


# ---------------------------------------------------------------------- detection
def _multilabel_conversation() -> ScriptedSegmentation:
    return ScriptedSegmentation([spans((1.0, 6.0)), spans((4.0, 9.0)), spans()],
                                shuffle=True)


def _powerset_conversation() -> ScriptedPowerset:
    nobody = lambda t: 1.0 - spans((1.0, 9.0))(t)  # noqa: E731
    script = [nobody, spans((1.0, 4.0)), spans((6.0, 9.0)), spans(), spans((4.0, 6.0)),
              spans(), spans()]
    return ScriptedPowerset(script)


@pytest.mark.parametrize("model", [_multilabel_conversation, _powerset_conversation])
def test_speech_and_overlap_regions(model):
    fixed = Binarization(0.5, 0.5)
    speech = detect_speech(model(), ramp(11.0), fixed)
    overlap = detect_overlap(model(), ramp(11.0), fixed)
    assert same_regions(speech, [(1.0, 9.0)], 0.03)
    assert same_regions(overlap, [(4.0, 6.0)], 0.03)


def test_powerset_scores_are_probabilities_of_speech_and_of_several_speakers():
    model = _powerset_conversation()
    speech = speech_scores(model, ramp(11.0)).data[:, 0]
    overlap = overlap_scores(model, ramp(11.0)).data[:, 0]
    frames = np.arange(len(speech))
    inside, alone, silent = frames[250:300], frames[100:150], frames[:40]
    assert speech[inside].min() > 0.99 and overlap[inside].min() > 0.99
    assert speech[alone].min() > 0.99 and overlap[alone].max() < 0.01
    assert speech[silent].max() < 0.01


def test_overlap_needs_two_output_speakers():
    with pytest.raises(ConfigError, match="one output speaker"):
        overlap_scores(ScriptedSegmentation([spans((0.0, 1.0))]), ramp(6.0))


def test_embedded_preset_refuses_overlap_and_resegmentation():
    with pytest.raises(ConfigError, match="no overlapped speech model"):
        detect_overlap(silero_stub(), ramp(1.0), Binarization())
    with pytest.raises(ConfigError, match="no resegmentation model"):
        resegment(silero_stub(), ramp(1.0), [(0.0, 1.0, "a")], Binarization())


# ---------------------------------------------------------------------- resegmentation
def test_local_speakers_are_mapped_to_the_baseline_speakers_of_the_chunk():
    t = np.arange(100)
    a, b = (t < 50) * 1.0, (t >= 40) * 1.0
    local = np.stack([b * 0.9, np.zeros(100), a * 0.8], axis=1)  # order: b, silent, a
    reference = np.stack([a, np.zeros(100), b], axis=1)  # baseline: a, absent, b
    mapped = map_to_baseline(local, reference, onset=0.5)
    np.testing.assert_allclose(mapped, np.stack([a * 0.8, np.zeros(100), b * 0.9], axis=1))
    assert not map_to_baseline(local * 0.4, reference, onset=0.5).any()  # none active


def test_baseline_tracks_answer_at_any_instant():
    tracks = BaselineTracks([(2.0, 3.0, "b"), (0.0, 1.0, "a"), (0.5, 1.5, "a"), (4, 4, "c")])
    assert tracks.speakers == ("a", "b")
    active = tracks.active(np.array([0.25, 1.25, 1.75, 2.5, 3.0]))
    assert active.tolist() == [[1, 0], [1, 0], [0, 0], [0, 1], [0, 0]]
    with pytest.raises(ConfigError, match="no segments"):
        BaselineTracks([(1.0, 1.0, "a")])


def test_resegmentation_keeps_baseline_labels_and_fixes_its_boundaries():
    truth = [(0.5, 4.0), (5.0, 9.0), (10.0, 12.0)]
    model = ScriptedSegmentation([spans(span) for span in truth], shuffle=True)
    baseline = [(0.5, 3.5, "alice"), (4.5, 9.5, "bob"), (10.4, 12.0, "carol")]
    result = resegment(model, ramp(13.0), baseline, Binarization(0.5, 0.5))
    assert [s for _, _, s in result] == ["alice", "bob", "carol"]
    assert same_regions([(s, e) for s, e, _ in result], truth, 0.03)


def test_resegmentation_leaves_out_a_voice_the_baseline_never_names():
    model = ScriptedSegmentation([spans((0.5, 4.0)), spans((6.0, 9.0))], shuffle=True)
    result = resegment(model, ramp(10.0), [(0.5, 4.0, "alice")], Binarization(0.5, 0.5))
    assert same_regions(result, [(0.5, 4.0, "alice")], 0.03)


def test_every_permutation_of_three_local_speakers_is_undone():
    truth = [(0.5, 2.0), (2.5, 4.0), (1.5, 3.0)]
    for order in itertools.permutations(range(3)):
        model = ScriptedSegmentation([spans(truth[k]) for k in order])
        baseline = [(s, e, name) for (s, e), name in zip(truth, "xyz")]
        result = resegment(model, ramp(5.0), baseline, Binarization(0.5, 0.5), step=1.0)
        assert same_regions(sorted(result, key=lambda r: r[2]), baseline, 0.03)
