"""The background level that trims the VAD's hangover (streamer.models.noisefloor)."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.models.noisefloor import BLOCK, HISTORY, LEAST, QUIET, NoiseFloor, chunk_energies


def _background_then_voice(rng: np.random.Generator, chunks: int = 400
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Energies (dB) and VAD probabilities of a stream: background near -60 dB that the
    VAD is sure of, then phrases at -25 dB whose last chunks fall back to the background
    while the VAD still says speech (its hangover)."""
    energies = -60.0 + rng.normal(0, 1.0, chunks)
    probs = rng.uniform(0.0, 0.04, chunks)
    for start in range(60, chunks - 30, 50):
        energies[start:start + 20] = -25.0 + rng.normal(0, 2.0, 20)
        probs[start:start + 20] = 0.9
        probs[start + 20:start + 28] = np.linspace(0.8, 0.2, 8)  # hangover
    return energies, probs


def test_hangover_at_the_background_level_is_trimmed_and_the_voice_kept():
    energies, probs = _background_then_voice(np.random.default_rng(1))
    quiet = NoiseFloor(3.0).trim(energies, probs)
    voice = energies > -40
    hangover = (probs >= 0.15) & ~voice
    assert not quiet[voice].any()
    assert quiet[hangover].mean() > 0.9
    assert not NoiseFloor(0.0).trim(energies, probs).any()


def test_nothing_is_trimmed_before_a_second_of_background():
    energies, probs = _background_then_voice(np.random.default_rng(2))
    speech = np.full(200, 0.9)
    quiet = NoiseFloor(3.0).trim(np.concatenate([np.full(200, -61.0), energies]),
                                 np.concatenate([speech, probs]))
    assert not quiet[:200].any()  # the VAD was never sure of silence: no background yet
    floor = NoiseFloor(3.0)
    assert not floor.trim(energies[:LEAST], np.zeros(LEAST)).any()
    assert floor.trim(energies[LEAST:LEAST + 2 * BLOCK], np.zeros(2 * BLOCK)).any()


def test_the_trim_does_not_depend_on_how_the_chunks_arrive():
    rng = np.random.default_rng(3)
    energies, probs = _background_then_voice(rng)
    whole = NoiseFloor(3.0).trim(energies, probs)
    assert whole.any()
    for _ in range(5):
        floor, parts = NoiseFloor(3.0), []
        cuts = np.sort(rng.choice(np.arange(1, len(energies)), 30, replace=False))
        for part in np.split(np.arange(len(energies)), cuts):
            parts.append(floor.trim(energies[part], probs[part]))
        assert np.array_equal(np.concatenate(parts), whole)


def test_a_louder_or_quieter_microphone_trims_the_same_chunks():
    energies, probs = _background_then_voice(np.random.default_rng(4))
    quiet = NoiseFloor(3.0).trim(energies, probs)
    for gain_db in (-20.0, 12.0):
        assert np.array_equal(NoiseFloor(3.0).trim(energies + gain_db, probs), quiet)


def test_over_digital_silence_only_the_silence_is_trimmed():
    samples = np.zeros(512 * 100, np.float32)
    samples[512 * 60:512 * 80] = 0.01 * np.sin(np.arange(512 * 20) * 0.1)
    energies = chunk_energies(samples, 512)
    assert len(energies) == 100 and np.isfinite(energies).all()
    probs = np.where(np.arange(100) >= 60, 0.9, 0.0)
    quiet = NoiseFloor(3.0).trim(energies, probs)
    assert not quiet[60:80].any()  # the faintest sound is far above no sound at all
    assert quiet[80:].all()


def test_the_history_is_bounded_and_a_state_round_trips():
    rng = np.random.default_rng(5)
    floor = NoiseFloor(3.0)
    floor.trim(-60 + rng.normal(0, 1, 3 * HISTORY), np.zeros(3 * HISTORY))
    assert len(floor.history) == HISTORY
    energies, probs = _background_then_voice(rng, 101)
    copy = NoiseFloor(3.0)
    copy.restore(*floor.state())
    assert np.array_equal(copy.trim(energies, probs), floor.trim(energies, probs))


@pytest.mark.parametrize("history, level, phase", [
    (np.full(HISTORY + 1, -60.0), None, 0),
    (np.array([np.nan]), None, 0),
    (np.zeros(3), "loud", 0),
    (np.zeros(3), float("inf"), 0),
    (np.zeros(3), None, BLOCK),
    (np.zeros(3), None, 1.0),
])
def test_a_state_that_is_not_a_noise_floor_is_refused(history, level, phase):
    with pytest.raises(ValueError, match="noise floor"):
        NoiseFloor(3.0).restore(history, level, phase)


def test_only_chunks_the_vad_is_sure_of_measure_the_background():
    floor = NoiseFloor(3.0)
    floor.trim(np.full(100, -30.0), np.full(100, QUIET))  # not sure: not background
    floor.trim(np.full(50, -70.0), np.full(50, QUIET / 2))
    assert len(floor.history) == 50 and floor.history.max() == -70.0
