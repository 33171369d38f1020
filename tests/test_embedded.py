"""The embedded preset: Silero VAD and GE2E from their packaged weights, on real speech."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from streamer.audio import load_audio
from streamer.config import DEFAULT_LATENCY, StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array
from streamer.errors import AudioFormatError, ConfigError
from streamer.evaluation import der_components, load_eval_set
from streamer.models.embedded import EmbeddedFrontend, EmbeddedSettings, speech_runs
from streamer.models.ge2e import MelSpectrogram, volume_gain
from streamer.models.noisefloor import chunk_energies
from streamer.models.silero import SileroVad, packaged_weights
from streamer.rttm import read_rttm

from tests.paths import DATA, EVAL


@pytest.fixture(scope="module")
def frontend() -> EmbeddedFrontend:
    return EmbeddedFrontend()


@pytest.fixture(scope="module")
def two_voices() -> tuple[np.ndarray, list]:
    return load_audio(DATA / "two_voices.wav"), read_rttm(DATA / "two_voices.rttm")["two_voices"]


def test_mel_spectrogram_matches_librosa():
    librosa = pytest.importorskip("librosa", reason="librosa comes with resemblyzer")
    signal = np.random.default_rng(0).normal(size=24000).astype(np.float32) * 0.1
    expected = librosa.feature.melspectrogram(y=signal, sr=16000, n_fft=400, hop_length=160,
                                              n_mels=40).T
    np.testing.assert_allclose(MelSpectrogram()(signal), expected, rtol=1e-4,
                               atol=1e-4 * expected.max())


def test_volume_gain_only_raises_quiet_audio():
    quiet = np.full(1000, 0.001, np.float32)
    assert volume_gain(quiet) == pytest.approx(10 ** ((-30 + 60) / 20), rel=1e-3)
    assert volume_gain(np.full(1000, 0.5, np.float32)) == 1.0
    assert volume_gain(np.zeros(10, np.float32)) == 1.0


def test_stateless_silero_matches_the_packaged_stateful_model(two_voices):
    samples = two_voices[0][:16000 * 6]
    reference = torch.jit.load(packaged_weights())
    reference.reset_states()
    expected = [float(reference(torch.from_numpy(samples[i: i + 512].copy())[None], 16000))
                for i in range(0, len(samples) - 511, 512)]
    vad = SileroVad()
    state = vad.new_state()
    got = np.concatenate([vad.process(state, samples[i: i + 3000])
                          for i in range(0, len(samples), 3000)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_vad_finds_the_speech_of_the_fixture(two_voices):
    samples, reference = two_voices
    probs = SileroVad().process(SileroVad.new_state(), samples)
    centers = (np.arange(len(probs)) + 0.5) * 0.032
    speech = np.zeros(len(probs), bool)
    for start, end, _ in reference:
        speech |= (centers >= start) & (centers < end)
    assert (probs[speech] >= 0.5).mean() > 0.8
    assert (probs[~speech] >= 0.5).mean() < 0.1


def test_embedded_preset_separates_two_synthetic_voices(frontend, two_voices):
    samples, reference = two_voices
    turns, engine = diarize_array(frontend, samples)
    hypothesis = [(t.start, t.end, t.speaker) for t in turns]
    result = der_components(reference, hypothesis)
    assert result.der < 0.15, f"DER {result.der:.3f}"
    main = {t.speaker for t in turns if t.duration > 2.0}
    assert len(main) == 2
    for before, after in zip(turns, turns[1:]):
        assert after.start >= before.end


def test_speaker_changes_land_in_the_pauses_between_turns(frontend, two_voices):
    # The voices take turns at pauses of 0.3-0.9 s. The GE2E windows (1.5 s) that see a
    # new voice's first words also see the previous one, so without moving changes to
    # the pause the first 0.2 s of a turn went to the previous speaker.
    samples, reference = two_voices
    turns, _ = diarize_array(frontend, samples)
    result = der_components(reference, [(t.start, t.end, t.speaker) for t in turns])
    assert result.confusion == pytest.approx(0.0, abs=0.02), result
    changes = [(before.end, after.start) for before, after in zip(turns, turns[1:])
               if before.speaker != after.speaker]
    pauses = [(first[1], second[0]) for first, second in zip(reference, reference[1:])]
    assert len(changes) == len(pauses)
    for (end, start), (silent, voiced) in zip(changes, pauses):
        assert silent - 0.1 <= end <= start <= voiced + 0.1


def test_known_number_of_speakers_is_respected(frontend, two_voices):
    # num_speakers has pyannote's meaning: exactly that many once both voices have spoken
    samples, reference = two_voices
    turns, engine = diarize_array(frontend, samples, StreamConfig(num_speakers=2))
    assert turns, "no turn at all"
    assert len({t.speaker for t in turns}) == 2
    assert len([s for s in engine.speakers() if s.speech > 0]) == 2
    result = der_components(reference, [(t.start, t.end, t.speaker) for t in turns])
    assert result.der < 0.15, f"DER {result.der:.3f}"


def test_num_speakers_is_a_floor_once_the_voices_have_spoken(frontend):
    # trn00 holds three AMI speakers, two of them close enough that the default tracking
    # keeps them together; with num_speakers=3 the third voice gets its own label.
    path = EVAL / "trn00.wav"
    if not path.exists():
        pytest.skip("needs ../shared/eval")
    samples = load_audio(path)
    _, free = diarize_array(frontend, samples)
    _, counted = diarize_array(frontend, samples, StreamConfig(num_speakers=3))
    assert len(free.speakers()) == 2
    spoken = [s for s in counted.speakers() if s.speech > 0]
    assert len(counted.speakers()) == len(spoken) == 3


def test_silence_and_noise_give_no_turns(frontend):
    rng = np.random.default_rng(1)
    quiet = np.concatenate([np.zeros(16000 * 5), rng.normal(size=16000 * 5) * 0.001])
    turns, engine = diarize_array(frontend, quiet.astype(np.float32))
    assert turns == [] and engine.speakers() == []


def test_streams_do_not_share_state(frontend, two_voices):
    samples = two_voices[0]
    alone, _ = diarize_array(frontend, samples, StreamConfig(latency=DEFAULT_LATENCY))
    first, second = StreamingDiarizer(frontend), StreamingDiarizer(frontend)
    interleaved: list = []
    for offset in range(0, len(samples), 4000):
        interleaved += [t for t in first.feed(samples[offset: offset + 4000]) if t.final]
        second.feed(samples[::-1][offset: offset + 4000].copy())
    interleaved += [t for t in first.flush() if t.final]
    assert interleaved == alone


def test_settings_are_validated():
    with pytest.raises(ValueError, match="window"):
        EmbeddedSettings(window=10)
    with pytest.raises(ValueError, match="hop"):
        EmbeddedSettings(hop=2.0, window=1.5)
    with pytest.raises(ValueError, match="known_split"):
        EmbeddedSettings(known_split=1.5)
    with pytest.raises(ValueError, match="split_separation"):
        EmbeddedSettings(split_separation=-1)
    with pytest.raises(ValueError, match="floor_margin"):
        EmbeddedSettings(floor_margin=-1)
    with pytest.raises(ValueError, match="window_threshold"):
        EmbeddedSettings(window_threshold=0)
    for offset in (0.0, 1.5):
        with pytest.raises(ValueError, match="vad_offset"):
            EmbeddedSettings(vad_offset=offset)


def test_speech_runs_keep_a_phrases_soft_edges_and_nothing_away_from_it():
    probs = np.array([0.0, 0.06, 0.07, 0.3, 0.08, 0.05, 0.02,  # a phrase with soft edges
                      0.07, 0.09, 0.08, 0.0,  # a run at the offset level with no onset
                      0.12, 0.04, 0.11])  # two phrases that a dip below the offset parts
    runs = speech_runs(probs, 0.1, 0.05)
    assert runs.tolist() == [False, True, True, True, True, True, False,
                             False, False, False, False,
                             True, False, True]
    # Without hysteresis (offset at the threshold), the threshold alone decides.
    assert speech_runs(probs, 0.1, 0.1).tolist() == (probs >= 0.1).tolist()
    assert not speech_runs(np.full(5, 0.09), 0.1, 0.05).any()
    assert speech_runs(np.zeros(0), 0.1, 0.05).tolist() == []


def test_vad_hysteresis_finds_the_soft_speech_of_a_distant_talker():
    """In a meeting room recording, Silero's probability over a distant talker's
    phrases often dips below the threshold inside and at the edges of the phrase. The
    hysteresis keeps those frames (less missed speech) without finding speech where no
    one talks."""
    data = load_eval_set(EVAL)
    samples, reference = load_audio(data.audio["trn03"]), data.reference["trn03"]
    results = {}
    for offset in (1.0, 0.5):
        engine = StreamingDiarizer(EmbeddedFrontend(EmbeddedSettings(vad_offset=offset)))
        turns = [t for t in engine.feed(samples) + engine.flush() if t.final]
        results[offset] = der_components(reference, [(t.start, t.end, t.speaker)
                                                     for t in turns])
    plain, hysteresis = results[1.0], results[0.5]
    assert hysteresis.missed < 0.8 * plain.missed
    assert hysteresis.false_alarm <= plain.false_alarm + 0.1
    assert hysteresis.missed + hysteresis.false_alarm + hysteresis.confusion \
        < plain.missed + plain.false_alarm + plain.confusion - 0.5


def test_the_speech_threshold_leaves_the_windows_embeddings_alone(two_voices):
    """How much of the VAD's output counts as speech (``vad_threshold``) and which frames
    the windows embed (``window_threshold``) are set apart: the clustering's thresholds
    hold for embeddings over the latter."""
    samples = _with_background(two_voices[0][:16000 * 20])
    streams, spoken = {}, {}
    for vad_threshold in (0.1, 0.9):
        engine = StreamingDiarizer(EmbeddedFrontend(EmbeddedSettings(
            vad_threshold=vad_threshold)))
        turns = engine.feed(samples) + engine.flush()
        streams[vad_threshold] = engine._stream
        spoken[vad_threshold] = sum(t.duration for t in turns)
    low, high = streams[0.1], streams[0.9]
    assert low.windows.keys() == high.windows.keys()
    assert all(np.array_equal(low.windows[k], high.windows[k]) for k in low.windows)
    assert spoken[0.1] > spoken[0.9] > 0


def _with_background(samples: np.ndarray, level_db: float = -50.0) -> np.ndarray:
    """``samples`` (voices over digital silence) over a steady background noise."""
    noise = np.random.default_rng(0).standard_normal(len(samples)) * 10 ** (level_db / 20)
    return (samples + noise).astype(np.float32)


def test_the_vad_hangover_into_the_background_is_not_speech(two_voices):
    """Over a steady background, Silero's probability stays up after each phrase: those
    frames are false alarm. The background level trims them, and nothing audible above
    the background is trimmed."""
    samples, reference = two_voices
    noisy = _with_background(samples)
    false_alarm = {}
    for margin in (0.0, 3.0):
        engine = StreamingDiarizer(EmbeddedFrontend(EmbeddedSettings(floor_margin=margin)))
        turns = engine.feed(noisy) + engine.flush()
        result = der_components(reference, [(t.start, t.end, t.speaker) for t in turns])
        false_alarm[margin] = result.false_alarm / result.total
        stream = engine._stream
        held = slice(stream.probs_start, stream.probs_start + len(stream.probs))
        trimmed = stream.quiet & (stream.probs >= stream.threshold)
        voice = chunk_energies(samples, 512)[held] > -50.0 + 10
        assert not (trimmed & voice).any()
        assert trimmed.any() == (margin > 0)
    assert false_alarm[0.0] > 0.015
    assert false_alarm[3.0] < 0.7 * false_alarm[0.0]


def test_first_interim_turn_follows_the_first_speech_within_a_second(frontend, two_voices):
    samples, reference = two_voices
    first_speech = min(start for start, _, _ in reference)
    engine = StreamingDiarizer(frontend)
    for offset in range(0, len(samples), 800):
        events = engine.feed(samples[offset: offset + 800])
        if events:
            break
    assert not events[0].final
    assert engine.position - first_speech <= 1.0
    assert events[0].start == pytest.approx(first_speech, abs=0.2)


def test_padded_batches_of_windows_embed_like_single_windows():
    from streamer.models.ge2e import VoiceEncoder

    encoder = VoiceEncoder()
    rng = np.random.default_rng(0)
    windows = [np.abs(rng.normal(size=(n, 40))).astype(np.float32) for n in (150, 80, 113)]
    padded = np.zeros((3, 150, 40), np.float32)
    for index, window in enumerate(windows):
        padded[index, :len(window)] = window
    together = encoder.embed_padded(padded, np.array([150, 80, 113]))
    for index, window in enumerate(windows):
        np.testing.assert_allclose(together[index], encoder.embed(window[None])[0], atol=1e-5)
        # One window alone (or windows of one length) take the unpacked path: its padding
        # is left out all the same.
        alone = encoder.embed_padded(padded[index:index + 1], np.array([len(window)]))
        np.testing.assert_allclose(alone[0], together[index], atol=1e-5)
    twice = encoder.embed_padded(padded[[1, 1]], np.array([80, 80]))
    np.testing.assert_allclose(twice, together[[1, 1]], atol=1e-5)


def test_huge_finite_samples_neither_raise_nor_end_the_stream(frontend, two_voices):
    """50 ms of +-1e30 inside speech, fed straight to the engine (as the server does):
    the turns after it are those of the clean signal (the clipped burst itself is loud
    noise, so boundaries may move by a frame or two)."""
    samples = two_voices[0][:16000 * 20].copy()
    clean, _ = diarize_array(frontend, samples, chunk=0.5)
    samples[16000 * 6: 16000 * 6 + 800] = np.where(np.arange(800) % 2, 1e30, -1e30)
    engine = StreamingDiarizer(frontend)
    turns = [t for i in range(0, len(samples), 8000) for t in engine.feed(samples[i:i + 8000])
             if t.final] + [t for t in engine.flush() if t.final]
    assert turns[-1].end > 19.0 and len({t.speaker for t in turns}) == 2
    later = [t for t in turns if t.start > 8]
    expected = [t for t in clean if t.start > 8]
    assert [t.speaker for t in later] == [t.speaker for t in expected]
    for turn, reference in zip(later, expected):
        assert abs(turn.start - reference.start) < 0.1 and abs(turn.end - reference.end) < 0.1
    with pytest.raises(AudioFormatError, match="NaN or infinite"):
        StreamingDiarizer(frontend).feed(np.array([0.1, np.nan], np.float32))


def test_stream_state_does_not_grow_with_the_stream(frontend, two_voices):
    """What a stream keeps (VAD probabilities, audio, mel frames, windows) covers the last
    buffer and one window, however long the stream has run (file mode on hours of
    audio)."""
    engine = StreamingDiarizer(frontend)
    samples = two_voices[0]
    for offset in range(0, len(samples), 8000):
        engine.feed(samples[offset: offset + 8000])
    stream = engine._stream
    kept = 16000 * (engine.config.duration + frontend.settings.window + 0.1)
    assert len(samples) > 3 * kept
    assert stream.probs.size * 512 <= kept and stream.audio.size <= kept
    assert len(stream.mels) * 160 <= kept and len(stream.windows) <= kept / 8000


@pytest.mark.parametrize("snapshot, background", [(False, False), (True, False), (True, True)])
def test_a_primed_resume_continues_the_vad_and_windows_exactly(frontend, two_voices, snapshot,
                                                              background):
    """A stream resumed with its state and audio context (from ``end``, or from a
    ``snapshot`` mid-step) analyses the audio after the cut exactly as the uncut stream:
    the state carries the VAD's recurrent state and probabilities, which Silero's memory
    would otherwise make differ for seconds, and the background level with the frames it
    trims. Without them, they differ."""
    samples = _with_background(two_voices[0]) if background else two_voices[0]
    cut = int(17.3 * 16000) + 123  # inside a turn, off the step and VAD grids

    def feed(engine, audio):
        for offset in range(0, len(audio), 8000):
            engine.feed(audio[offset: offset + 8000])

    uncut = StreamingDiarizer(frontend)
    feed(uncut, samples[:cut])
    first = StreamingDiarizer(frontend)
    feed(first, samples[:cut])
    if not snapshot:
        first.flush()
    state = first.state()
    assert state["frontend"]["samples"] == (cut if not snapshot else first._stream.received)
    feed(uncut, samples[cut:cut + 4 * 16000])
    probs, quiet, windows = {}, {}, {}
    for carried in (True, False):
        resumed = StreamingDiarizer(frontend)
        resumed.restore({**state, "frontend": state["frontend"] if carried else None})
        context = samples[:cut]  # a client's copy, more than needed
        resumed.prime(context)
        feed(resumed, samples[cut:cut + 4 * 16000])
        origin = cut - resumed.context_used(len(context))
        stream = resumed._stream
        at = (stream.probs_start * 512 + origin) // 512 - uncut._stream.probs_start
        probs[carried] = (uncut._stream.probs[at:at + len(stream.probs)], stream.probs)
        quiet[carried] = (uncut._stream.quiet[at:at + len(stream.quiet)], stream.quiet)
        later = [stop for stop in stream.windows if stop + origin > cut]
        assert later
        windows[carried] = [(uncut._stream.windows[stop + origin], stream.windows[stop])
                            for stop in later]
    assert np.array_equal(*probs[True]) and np.array_equal(*quiet[True])
    assert quiet[True][0].any()
    assert all(np.array_equal(a, b) for a, b in windows[True])
    assert not np.array_equal(*probs[False])


def test_a_malformed_carried_vad_state_is_refused(frontend, two_voices):
    first = StreamingDiarizer(frontend)
    first.feed(two_voices[0][:16000 * 12])
    first.flush()
    state = first.state()
    for broken in ({**state["frontend"], "hidden": "AAAA"}, {**state["frontend"], "probs": 5},
                   {**state["frontend"], "samples": 10}, {**state["frontend"], "floor": "AAA="},
                   {**state["frontend"], "quiet": state["frontend"]["probs"]},
                   {**state["frontend"], "floor_phase": -1},
                   {**state["frontend"], "floor_level": "loud"}):
        resumed = StreamingDiarizer(frontend)
        resumed.restore({**state, "frontend": broken})
        with pytest.raises(ConfigError, match="VAD state"):
            resumed.prime(two_voices[0][:16000 * 12])


def test_a_state_saved_without_the_background_level_still_resumes(frontend, two_voices):
    """States saved before the background level was carried resume: the level is
    measured afresh from the cut, the VAD continues exactly."""
    samples = _with_background(two_voices[0])
    first = StreamingDiarizer(frontend)
    first.feed(samples[:16000 * 12])
    state = first.state()
    older = {k: v for k, v in state["frontend"].items() if not k.startswith(("floor", "quiet"))}
    resumed = StreamingDiarizer(frontend)
    resumed.restore({**state, "frontend": older})
    resumed.prime(samples[:16000 * 12])
    turns = resumed.feed(samples[16000 * 12:]) + resumed.flush()
    assert turns and resumed._stream.floor.level is not None
    uncut = StreamingDiarizer(frontend)
    uncut.feed(samples)
    uncut.flush()
    stream, origin = resumed._stream, 16000 * 12 - resumed.context_used(16000 * 12)
    at = (stream.probs_start * 512 + origin) // 512 - uncut._stream.probs_start
    assert np.array_equal(uncut._stream.probs[at:at + len(stream.probs)], stream.probs)


def _voice_windows(rng: np.random.Generator, centre: np.ndarray, count: int) -> np.ndarray:
    """Unit windows about 0.1 (cosine) from ``centre``, as GE2E windows lie from their
    voice's centroid."""
    noise = rng.standard_normal((count, len(centre)))
    noise *= 0.48 / np.linalg.norm(noise, axis=1, keepdims=True)
    windows = centre + noise
    return windows / np.linalg.norm(windows, axis=1, keepdims=True)


def _close_speakers(rng: np.random.Generator) -> np.ndarray:
    """Two unit centroids 0.056 apart: closer than their windows lie to them."""
    a = rng.standard_normal(256)
    a /= np.linalg.norm(a)
    across = rng.standard_normal(256)
    across -= (across @ a) * a
    b = a + 0.35 * across / np.linalg.norm(across)
    return np.stack([a, b / np.linalg.norm(b)])


def test_a_buffer_keeps_apart_two_close_voices_the_stream_knows(frontend):
    rng = np.random.default_rng(0)
    speakers = _close_speakers(rng)
    windows = np.concatenate([_voice_windows(rng, speakers[0], 8),
                              _voice_windows(rng, speakers[1], 6)])
    pitch = np.full(len(windows), np.nan)
    stream = frontend.stream(StreamConfig(speech_threshold=0.5))
    # One buffer's clustering alone cannot tell them apart ...
    assert len(set(stream._cluster(windows, pitch)[0])) == 1
    # ... but given the stream's speakers, each voice is a local speaker of its own.
    labels, _ = stream._cluster(windows, pitch, speakers)
    assert len(set(labels[:8])) == 1 and len(set(labels[8:])) == 1
    assert labels[0] != labels[8]
    off = EmbeddedFrontend(EmbeddedSettings(known_split=0.0), frontend.vad, frontend.encoder)
    assert len(set(off.stream(StreamConfig(speech_threshold=0.5))._cluster(
        windows, pitch, speakers)[0])) == 1


def test_one_voice_between_two_known_speakers_stays_one_local_speaker(frontend):
    """A voice that two speakers share (counted twice) has windows nearest to each of
    them, spread about the middle: its cluster is not split, so the double is not fed."""
    rng = np.random.default_rng(1)
    speakers = _close_speakers(rng)
    middle = speakers.sum(axis=0) / np.linalg.norm(speakers.sum(axis=0))
    windows = _voice_windows(rng, middle, 14)
    nearest = np.argmax(windows @ speakers.T, axis=1)
    assert min(np.bincount(nearest, minlength=2)) >= 3  # both speakers are candidates
    stream = frontend.stream(StreamConfig(speech_threshold=0.5))
    assert len(set(stream._cluster(windows, np.full(14, np.nan), speakers)[0])) == 1


def test_too_few_windows_near_a_second_speaker_do_not_split(frontend):
    rng = np.random.default_rng(2)
    speakers = _close_speakers(rng)
    windows = np.concatenate([_voice_windows(rng, speakers[0], 10),
                              _voice_windows(rng, speakers[1], 2)])
    stream = frontend.stream(StreamConfig(speech_threshold=0.5))
    assert len(set(stream._cluster(windows, np.full(12, np.nan), speakers)[0])) == 1


def test_the_engine_gives_the_front_end_the_speakers_it_knows(frontend, two_voices):
    audio, _ = two_voices
    calls: list = []  # per buffer: the speakers given, and the engine's at that time
    make = frontend.stream

    class Recording:
        def __init__(self, config):
            self.inner = make(config)

        def analyze(self, buffer, start, speakers=None):
            calls.append((speakers, engine._memory.centroids))
            return self.inner.analyze(buffer, start, speakers)

    recorded = EmbeddedFrontend(frontend.settings, frontend.vad, frontend.encoder)
    recorded.stream = Recording
    engine = StreamingDiarizer(recorded, StreamConfig())
    engine.feed(audio)
    engine.flush()
    assert calls[0][0] is None
    given = [(speakers, known) for speakers, known in calls if speakers is not None]
    assert given and all(np.array_equal(speakers, known) for speakers, known in given)
    assert len(given[-1][0]) == len(engine.speakers()) == 2


def test_frames_of_a_folded_window_give_no_pitch(frontend, two_voices):
    """A window folded into a cluster it was not clustered with often straddles a change
    of speaker: the frames it covers may hold the neighbour's voice, so they give the
    local speakers no pitch (a neighbour voiced more often would take over the median)."""
    audio = two_voices[0][:16000 * 12]
    make = frontend.stream

    def run(fold_first: bool) -> list:
        buffers = []  # per buffer: its frames' pitch, and which the first window covers

        class Folding:
            def __init__(self, config):
                self.inner = make(config)
                fold, self.first = self.inner._fold, None

                def forced(embeddings):
                    labels, folded = fold(embeddings)
                    self.first = next(s for s, e in self.inner.windows.items()
                                      if np.array_equal(e, embeddings[0]))
                    if fold_first:
                        folded = folded.copy()
                        folded[0] = True
                    return labels, folded

                self.inner._fold = forced

            def analyze(self, buffer, start, speakers=None):
                self.first = None
                analysis = yield from self.inner.analyze(buffer, start, speakers)
                if self.first is not None:
                    centres = (start + analysis.frames.center(np.arange(len(analysis.pitch)))) \
                        * 16000
                    covered = (centres <= self.first) \
                        & (centres >= self.first - self.inner.window_samples)
                    buffers.append((np.asarray(analysis.pitch), covered))
                return analysis

        folding = EmbeddedFrontend(frontend.settings, frontend.vad, frontend.encoder)
        folding.stream = Folding
        engine = StreamingDiarizer(folding, StreamConfig())
        engine.feed(audio)
        engine.flush()
        return buffers

    plain, folded = run(False), run(True)
    assert len(plain) == len(folded) > 5
    # Without the fold, the frames of the first windows have a pitch in most buffers ...
    assert sum(np.isfinite(p[covered]).any() for p, covered in plain) > len(plain) / 2
    for (before, covered), (after, same) in zip(plain, folded):
        assert np.array_equal(covered, same)
        # ... folded, none; the other frames keep theirs.
        assert np.isnan(after[covered]).all()
        np.testing.assert_array_equal(after[~covered], before[~covered])
