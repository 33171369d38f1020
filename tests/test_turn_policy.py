"""The finalisation policy: latency cut, per-frame labels, interim view."""
from __future__ import annotations

import numpy as np

from streamer.events import speaker_label
from streamer.turns import TurnPolicy


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
    labels = policy.labels(activations, speech, commit=True, known=True)
    assert labels.tolist() == [1, 1, -1, 0]
    # the next frames start from speaker 0, the last one committed
    assert policy.labels(np.zeros((1, 2)), np.array([0.9]), commit=True,
                         known=True).tolist() == [0]


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
