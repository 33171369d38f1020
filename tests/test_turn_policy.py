"""The finalisation policy: latency cut, per-frame labels, interim view."""
from __future__ import annotations

import numpy as np

from streamer.events import speaker_label
from streamer.turns import TurnPolicy, snap_changes


def _policy(latency: float = 1.0) -> TurnPolicy:
    return TurnPolicy(0.1, 16000, latency, 0.5, min_on=0.0, min_off=0.0, label=speaker_label)


def test_frames_are_final_latency_after_the_step_end() -> None:
    policy = _policy(latency=1.0)
    assert policy.decided_until(received=48000, end=48000, final=False) == 20  # 3 s - 1 s
    assert policy.decided_until(received=48000, end=8000, final=False) == -5  # nothing yet
    assert policy.decided_until(received=48000, end=48000, final=True) == 30


def test_unclaimed_speech_goes_to_the_previous_speaker_and_is_remembered() -> None:
    policy = _policy()
    activations = np.array([[0.0, 0.9], [0.0, 0.0], [0.0, 0.0], [0.8, 0.0]])
    speech = np.array([0.9, 0.9, 0.1, 0.9])
    labels = policy.decide(activations, speech, 4)
    assert labels.tolist() == [1, 1, -1, 0]
    # the next frames start from speaker 0, the last one committed
    assert policy.decide(np.zeros((1, 2)), np.array([0.9]), 1).tolist() == [0]


def test_speech_before_any_speaker_is_claimed_goes_to_the_first_speaker_claimed() -> None:
    policy = _policy()
    activations = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.9], [0.8, 0.0]])
    labels = policy.decide(activations, np.full(4, 0.9), 4)
    assert labels.tolist() == [1, 1, 1, 0]


def test_speech_that_no_speaker_ever_claims_is_the_first_speaker_s_not_lost() -> None:
    # A stream whose only voice is too short to embed: its speech is final all the same,
    # as the interim view showed it (SPEAKER_00).
    policy = _policy()
    labels = policy.decide(np.zeros((3, 2)), np.array([0.9, 0.9, 0.1]), 3, known=False)
    assert labels.tolist() == [0, 0, -1]


def test_interim_view_waits_for_min_interim_and_is_sent_once() -> None:
    policy = _policy()
    speaking = np.tile([[0.0, 0.9]], (1, 1))
    assert policy.interim(speaking, np.full(1, 0.9), known=True) == []  # 0.1 s < 0.15 s
    assert policy.view is None
    longer = np.tile([[0.0, 0.9]], (2, 1))
    shown = policy.interim(longer, np.full(2, 0.9), known=True)
    assert [(t.speaker, t.final) for t in shown] == [("SPEAKER_01", False)]
    assert policy.view == shown[0]
    assert policy.interim(longer, np.full(2, 0.9), known=True) == []  # unchanged: not resent
    policy.cut_view()
    assert policy.view is None


def test_first_speech_shows_as_the_first_speaker_before_anyone_is_known() -> None:
    policy = _policy()
    unclaimed = np.zeros((4, 2))
    shown = policy.interim(unclaimed, np.full(4, 0.9), known=False)
    assert [t.speaker for t in shown] == ["SPEAKER_00"]
    assert policy.interim(unclaimed, np.full(4, 0.9), known=True) == []
    assert policy.view is None


def test_a_late_change_of_speaker_moves_back_to_the_pause_before_it() -> None:
    # A speaks, pauses, and B starts after the pause, but the labels follow A for two
    # more frames: those become B.
    assert snap_changes([0, 0, -1, -1, 0, 0, 1, 1, 1], reach=3).tolist() == \
        [0, 0, -1, -1, 1, 1, 1, 1, 1]


def test_an_early_change_of_speaker_moves_on_to_the_pause_after_it() -> None:
    assert snap_changes([0, 0, 1, 1, -1, -1, 1, 1], reach=3).tolist() == \
        [0, 0, 0, 0, -1, -1, 1, 1]


def test_a_change_farther_from_a_pause_than_reach_stays() -> None:
    labels = [0, 0, -1, 0, 0, 0, 0, 1, 1]
    assert snap_changes(labels, reach=3).tolist() == labels
    assert snap_changes(labels, reach=4).tolist() == [0, 0, -1, 1, 1, 1, 1, 1, 1]


def test_a_pause_between_two_other_speakers_or_with_nothing_after_it_moves_nothing() -> None:
    # C before the pause: the stretch of A after it is A's own turn, not B's start.
    assert snap_changes([2, 2, -1, 0, 0, 1, 1], reach=3).tolist() == [2, 2, -1, 0, 0, 1, 1]
    # B after the pause is not known to go on: the short B stretch stays.
    assert snap_changes([0, 0, 1, -1, -1], reach=3).tolist() == [0, 0, 1, -1, -1]
    # Changes with overlapping speech (no pause) stay where the activations put them.
    assert snap_changes([0, 0, 1, 1, 0, 0], reach=3).tolist() == [0, 0, 1, 1, 0, 0]


def test_the_nearer_pause_wins_and_the_previous_speaker_counts_for_a_leading_pause() -> None:
    # Pause 2 frames before the change and 1 frame after it: the change moves to the later.
    assert snap_changes([0, -1, 0, 0, 1, -1, 1], reach=3).tolist() == \
        [0, -1, 0, 0, 0, -1, 1]
    # The labels start with a pause after speaker 0 spoke (already decided).
    assert snap_changes([-1, 0, 0, 1, 1], reach=3, previous=0).tolist() == [-1, 1, 1, 1, 1]
    assert snap_changes([-1, 0, 0, 1, 1], reach=3, previous=2).tolist() == [-1, 0, 0, 1, 1]
    assert snap_changes([-1, 0, 0, 1, 1], reach=3).tolist() == [-1, 0, 0, 1, 1]


def test_decided_frames_see_the_undecided_ones_for_a_change_at_a_pause() -> None:
    policy = _policy()  # 0.1 s frames: a reach of 5 frames
    a, b, pause = [0.9, 0.0], [0.0, 0.9], [0.0, 0.0]
    activations = np.array([a, a, pause, a, a, b, b, b])
    speech = np.array([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9])
    # Only the first 4 frames are decided; the change to B at frame 5 is seen, so frame
    # 3, after the pause, is B's.
    assert policy.decide(activations, speech, 4).tolist() == [0, 0, -1, 1]
    # The next frames go on from speaker 1, the last decided one.
    assert policy.decide(np.zeros((1, 2)), np.array([0.9]), 1).tolist() == [1]
    # Without frames after them, the decided frames keep their own labels.
    fresh = _policy()
    assert fresh.decide(activations[:4], speech[:4], 4).tolist() == [0, 0, -1, 0]
