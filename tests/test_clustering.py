from __future__ import annotations

import numpy as np

from streamer.clustering import CentroidMemory

E = np.eye(4)


def test_two_locals_of_one_buffer_never_share_a_global_speaker():
    memory = CentroidMemory(delta_new=0.5, max_speakers=5)
    memory.assign(E[:1], np.array([True]))
    # Both locals are closest to speaker 0, but only one may take it; the other is not
    # far from speaker 0 either, so it is left unassigned rather than made a new speaker.
    result = memory.assign(np.array([[1, 0.1, 0, 0], [1, 0.2, 0, 0]]), np.array([True, True]))
    assert sorted(result) == [-1, 0]
    assert len(memory) == 1
    # A far one becomes a new speaker.
    result = memory.assign(np.array([[1, 0.1, 0, 0], [0, 0, 1, 0]]), np.array([True, True]))
    assert result.tolist() == [0, 1]


def test_new_speaker_only_beyond_delta_new():
    memory = CentroidMemory(delta_new=0.5, max_speakers=5)
    assert memory.assign(E[:1], np.array([True])).tolist() == [0]
    close = np.array([[1.0, 0.3, 0, 0]])
    assert memory.assign(close, np.array([True])).tolist() == [0]
    assert memory.assign(E[1:2], np.array([True])).tolist() == [1]
    assert len(memory) == 2


def test_only_clearly_active_speakers_create_or_update_centroids():
    memory = CentroidMemory(delta_new=0.5, max_speakers=5)
    assert memory.assign(E[:1], np.array([False])).tolist() == [-1]
    assert len(memory) == 0
    memory.assign(E[:1], np.array([True]))
    before = memory.centroids.copy()
    assert memory.assign(np.array([[1, 0.2, 0, 0]]), np.array([False])).tolist() == [0]
    np.testing.assert_allclose(memory.centroids, before)
    memory.assign(np.array([[1, 0.2, 0, 0]]), np.array([True]))
    assert not np.allclose(memory.centroids, before)


def test_max_speakers_cap_maps_to_the_nearest_free_centroid():
    memory = CentroidMemory(delta_new=0.5, max_speakers=2)
    memory.assign(E[:2], np.array([True, True]))
    assert memory.assign(E[2:3], np.array([True])).tolist() in ([0], [1])
    assert len(memory) == 2


def _turned(degrees: float) -> np.ndarray:
    angle = np.radians(degrees)
    return np.array([[np.cos(angle), np.sin(angle), 0, 0]])


def test_min_speakers_makes_new_speakers_easier_to_create():
    distinct = np.array([[1.0, 0.6, 0, 0]])  # cosine distance ~0.14 from speaker 0
    strict = CentroidMemory(delta_new=0.2, max_speakers=5)
    strict.assign(E[:1], np.array([True]))
    assert strict.assign(distinct, np.array([True])).tolist() == [0]
    lenient = CentroidMemory(delta_new=0.2, max_speakers=5, min_speakers=2)
    lenient.assign(E[:1], np.array([True]))
    assert lenient.assign(distinct, np.array([True])).tolist() == [1]


def test_below_min_speakers_a_voice_beyond_the_speakers_own_spread_is_new():
    # Speaker 0's local speakers lie within a few degrees of its centroid; a voice at
    # 15 degrees (cosine distance 0.034, far below delta_new) is beyond that spread.
    memory = CentroidMemory(delta_new=0.3, max_speakers=5, min_speakers=2)
    for degrees in (0, 2, -2, 1, -1, 2, -2):
        assert memory.assign(_turned(degrees), np.array([True])).tolist() == [0]
    assert 0.0 < memory.radius(0) < 0.01
    assert memory.assign(_turned(15), np.array([True])).tolist() == [1]
    # At min_speakers the usual rule applies again: a third such voice joins the nearest.
    assert memory.assign(_turned(-15), np.array([True])).tolist() == [0]
    assert len(memory) == 2
    # Without the bound, the same voice is speaker 0.
    free = CentroidMemory(delta_new=0.3, max_speakers=5)
    for degrees in (0, 2, -2, 1, -1, 2, -2, 15):
        assert free.assign(_turned(degrees), np.array([True])).tolist() == [0]


def test_radius_travels_with_the_speakers():
    memory = CentroidMemory(delta_new=0.3, max_speakers=5, min_speakers=2)
    for degrees in (0, 3, -3, 1):
        memory.assign(_turned(degrees), np.array([True]))
    again = CentroidMemory(delta_new=0.3, max_speakers=5, min_speakers=2)
    again.load(memory.sums, memory.pitch_sums, memory.spread_sums)
    assert again.radius(0) == memory.radius(0) < 0.3 * 0.5
    young = CentroidMemory(delta_new=0.3, max_speakers=5, min_speakers=2)
    young.load(memory.sums)
    assert young.radius(0) == 0.15


def test_reluctance_keeps_a_noisy_known_voice_from_becoming_a_new_speaker():
    known = np.array([[1.0, 0.0]])
    noisy = np.array([[np.cos(0.8), np.sin(0.8)]])  # cosine distance 0.30
    eager = CentroidMemory(delta_new=0.25, max_speakers=5)
    eager.assign(known, np.array([True]))
    assert eager.assign(noisy, np.array([True])).tolist() == [1]  # a new speaker
    reluctant = CentroidMemory(delta_new=0.25, max_speakers=5)
    reluctant.assign(known, np.array([True]))
    assert reluctant.assign(noisy, np.array([True]), reluctance=1.5).tolist() == [0]
    assert len(reluctant) == 1


# Displaced voices: delta_new 0.5, so a voice at cosine distance ~0.29 (45 degrees) from
# speaker 0 is "near" it, yet beyond DISPLACED_DISTANCE x delta_new (0.2).
HELD = _turned(5)  # the voice speaker 0 is, as a buffer sees it
OTHER = _turned(45)


def _buffers(memory: CentroidMemory, second: np.ndarray, count: int,
             firm: bool = True) -> list[list[int]]:
    """``count`` buffers in which speaker 0's voice and ``second`` both speak."""
    both = np.concatenate([HELD, second])
    return [memory.assign(both, np.array([True, True]), firm=np.array([True, firm])).tolist()
            for _ in range(count)]


def _one_speaker(persistence: int) -> CentroidMemory:
    memory = CentroidMemory(delta_new=0.5, max_speakers=5, persistence=persistence)
    memory.assign(E[:1], np.array([True]))
    return memory


def test_a_voice_displaced_buffer_after_buffer_becomes_a_new_speaker():
    memory = _one_speaker(persistence=3)
    results = _buffers(memory, OTHER, 3)
    # Two buffers leave it without a speaker; the third names it, and from then on the
    # voice keeps that speaker.
    assert results == [[0, -1], [0, -1], [0, 1]]
    assert len(memory) == 2
    np.testing.assert_allclose(memory.centroids[1], OTHER[0], atol=1e-9)
    assert _buffers(memory, OTHER, 1) == [[0, 1]]


def test_a_displaced_voice_needs_firm_speech_and_an_unbroken_run():
    memory = _one_speaker(persistence=3)
    assert _buffers(memory, OTHER, 4, firm=False) == [[0, -1]] * 4
    _buffers(memory, OTHER, 2)
    memory.assign(HELD, np.array([True]), firm=np.array([True]))  # it falls silent
    assert _buffers(memory, OTHER, 2) == [[0, -1]] * 2
    assert len(memory) == 1
    # Another displaced voice in between restarts the count.
    elsewhere = np.array([[np.cos(0.8), 0, np.sin(0.8), 0]])
    _buffers(memory, elsewhere, 1)
    assert _buffers(memory, OTHER, 2) == [[0, -1]] * 2
    assert _buffers(memory, OTHER, 1) == [[0, 1]]


def test_a_displaced_local_close_to_its_speaker_stays_that_speaker():
    memory = _one_speaker(persistence=2)
    near = _turned(20)  # cosine distance 0.06, within DISPLACED_DISTANCE x delta_new
    assert _buffers(memory, near, 6) == [[0, -1]] * 6
    assert len(memory) == 1


def test_displaced_voices_respect_max_speakers_and_reset():
    memory = CentroidMemory(delta_new=0.5, max_speakers=1, persistence=2)
    memory.assign(E[:1], np.array([True]))
    assert _buffers(memory, OTHER, 4) == [[0, -1]] * 4
    assert len(memory) == 1
    memory = _one_speaker(persistence=2)
    _buffers(memory, OTHER, 1)
    memory.load(memory.sums)  # a resumed stream starts its count again
    assert _buffers(memory, OTHER, 2) == [[0, -1], [0, 1]]
