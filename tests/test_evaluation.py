"""DER and JER against pyannote.metrics and by hand; start points (rotation); eval sets."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from streamer.evaluation import (JerComponents, der_components, jer_components,
                                 load_eval_set, rotate_samples, rotate_segments, rotate_uem,
                                 score_file)


def random_segments(rng: np.random.Generator, labels: list[str]) -> list:
    """Up to 3 turns per speaker; one speaker's turns never overlap each other, as in RTTM
    files (pyannote.metrics would count the overlap of a speaker with itself twice)."""
    segments = []
    for label in labels:
        points = np.sort(rng.uniform(0.0, 30.0, 2 * rng.integers(0, 4)))
        segments += [(float(s), float(e), label) for s, e in zip(points[::2], points[1::2])]
    rng.shuffle(segments)
    return segments


@pytest.mark.parametrize("skip_overlap", [False, True])
def test_der_and_jer_equal_pyannote_metrics_on_random_segments(skip_overlap):
    core = pytest.importorskip("pyannote.core")
    metrics = pytest.importorskip("pyannote.metrics.diarization")

    def annotation(segments):
        result = core.Annotation()
        for track, (start, end, label) in enumerate(segments):
            result[core.Segment(start, end), track] = label
        return result

    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(150):
        reference = random_segments(rng, ["A", "B", "C", "D"][:rng.integers(0, 5)])
        hypothesis = random_segments(rng, ["1", "2", "3", "4", "5"][:rng.integers(0, 6)])
        uem = [(2.0, 25.0)] if trial % 2 else [(0.0, 10.0), (12.5, 31.0)]
        timeline = core.Timeline([core.Segment(s, e) for s, e in uem])
        ref, hyp = annotation(reference), annotation(hypothesis)
        der = metrics.DiarizationErrorRate(skip_overlap=skip_overlap)(ref, hyp, uem=timeline)
        jer = metrics.JaccardErrorRate(skip_overlap=skip_overlap)(ref, hyp, uem=timeline)
        ours_der = der_components(reference, hypothesis, uem, skip_overlap).der
        ours_jer = jer_components(reference, hypothesis, uem, skip_overlap).jer
        assert ours_der == pytest.approx(der, abs=1e-6), (trial, reference, hypothesis)
        assert ours_jer == pytest.approx(jer, abs=1e-6), (trial, reference, hypothesis)
        checked += bool(reference) and bool(hypothesis) and 0.0 < jer < 1.0
    assert checked > 50  # most trials are neither empty nor all-wrong


def test_jer_worked_by_hand():
    reference = [(0.0, 10.0, "A"), (10.0, 20.0, "B"), (26.0, 28.0, "C")]
    hypothesis = [(0.0, 8.0, "1"), (8.0, 20.0, "2"), (20.0, 25.0, "3")]
    # A-1 overlap 8 s, A-2 2 s, B-2 10 s: A -> 1, B -> 2; C meets no hypothesis speaker.
    # A: 1 - 8/10; B: 1 - 10/12 (2 spans [8, 20]); C: unmapped, 1. Speaker 3 costs nothing.
    result = jer_components(reference, hypothesis, [(0.0, 30.0)])
    assert result.speakers == 3
    assert result.jer == pytest.approx((0.2 + 1 / 6 + 1.0) / 3)
    # DER on the same: missed C 2 s, false alarm 3 for 5 s, [8, 10] confused, of 22 s
    der = der_components(reference, hypothesis, [(0.0, 30.0)])
    assert (der.missed, der.false_alarm, der.confusion, der.total) == \
        pytest.approx((2.0, 5.0, 2.0, 22.0))
    # the scored region decides which speakers count: without [25, 30], C is gone
    assert jer_components(reference, hypothesis, [(0.0, 25.0)]).jer == \
        pytest.approx((0.2 + 1 / 6) / 2)


def test_jer_totals_average_over_the_speakers_of_all_files():
    total = JerComponents()
    total.add(jer_components([(0.0, 10.0, "A"), (10.0, 20.0, "B")],
                             [(0.0, 10.0, "x")]))  # A perfect, B unmapped: 0 + 1
    total.add(jer_components([(0.0, 5.0, "A")], [(0.0, 4.0, "y")]))  # 1 - 4/5
    assert total.speakers == 3
    assert total.jer == pytest.approx((0.0 + 1.0 + 0.2) / 3)  # not the mean of file means


def test_no_reference_speech_scores_like_pyannote():
    assert jer_components([], [(0.0, 1.0, "x")], [(0.0, 5.0)]).jer == 1.0
    assert der_components([], [(0.0, 1.0, "x")], [(0.0, 5.0)]).der == 1.0
    assert der_components([], [], [(0.0, 5.0)]).der == 0.0


def test_score_file_counts_speakers_over_the_whole_file():
    reference = [(0.0, 4.0, "A"), (4.0, 8.0, "B"), (20.0, 21.0, "C")]
    hypothesis = [(0.0, 4.0, "s0"), (4.0, 8.0, "s1"), (20.0, 21.0, "s1")]
    score = score_file(reference, hypothesis, [(0.0, 10.0)], duration=30.0, compute=1.5)
    assert (score.speakers, score.reference_speakers, score.right_count) == (2, 3, 0)
    assert score.der.der == 0.0 and score.jer.jer == 0.0  # C lies outside the scored region
    assert score.rtf == pytest.approx(0.05)
    assert score.to_dict()["reference_speakers"] == 3


# ------------------------------------------------------------------ start points
def rounded(segments: list) -> list:
    return [(round(s, 9), round(e, 9), speaker) for s, e, speaker in segments]


def test_rotation_moves_segments_back_and_splits_the_one_across_the_wrap():
    segments = [(1.0, 3.0, "A"), (4.0, 7.0, "B"), (8.0, 9.5, "A"), (9.8, 10.3, "C")]
    rotated = [(0.0, 2.0, "B"), (3.0, 4.5, "A"), (4.8, 5.0, "C"), (6.0, 8.0, "A"),
               (9.0, 10.0, "B")]
    assert rounded(rotate_segments(segments, 5.0, 10.0)) == rotated
    assert rounded(rotate_segments(segments, 15.0, 10.0)) == rotated  # modulo
    assert rounded(rotate_segments(segments, -5.0, 10.0)) == rotated
    assert rotate_segments(segments, 0.0, 10.0) == segments  # left as it is, even past 10 s
    assert rotate_segments([(2.0, 3.0, "A")], 3.0, 10.0) == [(9.0, 10.0, "A")]


def test_rotated_reference_follows_the_rotated_samples():
    """Each sample holds its reference speaker's number, so after rotating samples and
    reference alike every rotated segment must still cover only its speaker's number."""
    rate, duration = 100, 10.0
    reference = [(0.5, 2.25, "A"), (2.5, 6.0, "B"), (6.4, 9.7, "A"), (9.8, 10.0, "B")]
    codes = np.zeros(int(duration * rate))
    for start, end, speaker in reference:
        codes[round(start * rate): round(end * rate)] = {"A": 1, "B": 2}[speaker]
    for shift in (0.0, 0.3, 2.37, 5.0, 9.99, 12.5):
        samples, applied = rotate_samples(codes, shift, rate)
        assert applied == pytest.approx((round(shift * rate) % len(codes)) / rate)
        rotated = rotate_segments(reference, applied, duration)
        covered = np.zeros(len(samples), bool)
        for start, end, speaker in rotated:
            span = slice(round(start * rate), round(end * rate))
            assert np.all(samples[span] == {"A": 1, "B": 2}[speaker]), (shift, start, end)
            covered[span] = True
        assert np.all(samples[~covered] == 0)  # nothing spoken outside the segments
        for speaker in "AB":
            assert sum(e - s for s, e, x in rotated if x == speaker) == \
                pytest.approx(sum(e - s for s, e, x in reference if x == speaker))


def test_rotate_samples_is_a_left_rotation():
    samples = np.arange(10, dtype=np.float32)
    rotated, applied = rotate_samples(samples, 0.3, sample_rate=10)
    assert rotated.tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 1, 2] and applied == pytest.approx(0.3)
    assert rotate_samples(samples, 1.0, sample_rate=10)[0].tolist() == samples.tolist()


def test_rotate_uem():
    assert rotate_uem(None, 0.0, 30.0) is None  # the unshifted file keeps its default region
    assert rotate_uem(None, 12.0, 30.0) == pytest.approx([(0.0, 18.0), (18.0, 30.0)])
    assert rotate_uem([(5.0, 20.0)], 10.0, 30.0) == pytest.approx([(0.0, 10.0), (25.0, 30.0)])
    assert rotate_uem([(5.0, 20.0)], 0.0, 30.0) == [(5.0, 20.0)]


# ------------------------------------------------------------------ evaluation sets
def test_load_eval_set_finds_audio_reference_and_uem(tmp_path, caplog):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "b.flac").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "reference.rttm").write_text(
        "SPEAKER a 1 0.5 1.0 <NA> <NA> x <NA> <NA>\nSPEAKER b 1 0.0 2.0 <NA> <NA> y <NA> <NA>\n"
        "SPEAKER gone 1 0.0 2.0 <NA> <NA> y <NA> <NA>\n")
    (tmp_path / "reference.uem").write_text("a NA 0.000 3.000\n")
    with caplog.at_level(logging.WARNING):
        found = load_eval_set(str(tmp_path))
    assert found.name == tmp_path.name
    assert found.audio == {"a": str(tmp_path / "a.wav"), "b": str(tmp_path / "b.flac")}
    assert found.reference["a"] == [(0.5, 1.5, "x")]
    assert found.uem == {"a": [(0.0, 3.0)]}
    assert "gone" in caplog.text  # a reference file without audio is not silently dropped
    # an explicit RTTM (the --audio DIR --rttm REF form) scores whole files unless --uem
    assert load_eval_set(str(tmp_path), str(tmp_path / "reference.rttm")).uem == {}


def test_load_eval_set_refuses_a_folder_without_reference_or_matching_audio(tmp_path):
    with pytest.raises(ValueError, match="no reference.rttm"):
        load_eval_set(str(tmp_path))
    (tmp_path / "reference.rttm").write_text("SPEAKER a 1 0.5 1.0 <NA> <NA> x <NA> <NA>\n")
    with pytest.raises(ValueError, match="no audio file"):
        load_eval_set(str(tmp_path))
