"""File mode's second pass: a whole file is streamed again from the speakers the first pass
found, so a voice heard early, before it spoke enough to become a speaker, is labelled."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from streamer.audio import AudioFile
from streamer.config import FILE_PASSES, MAX_PASSES, StreamConfig
from streamer.engine import StreamingDiarizer, diarize_array, run_chunks, run_engine, run_passes
from streamer.errors import ConfigError
from streamer.filemode import run_file
from tests.fakes import fake_frontend, tone_conversation
from tests.paths import DATA, EVAL

A, B = 300.0, 700.0
# A voice (B) speaks 0.8 s early on, and enough to be a speaker only 12 s later: more than
# a buffer (10 s) after its first words, so one pass cannot go back to them.
EARLY_WORDS = [(A, 6.0), (B, 0.8), (A, 12.0), (B, 6.0)]
# Speakers are opened only by a local speaker with 3 s of speech in its buffer.
SLOW_TO_OPEN = StreamConfig(rho_update=0.3)


def spans(turns) -> list[tuple[str, float, float]]:
    return [(t.speaker, round(t.start, 2), round(t.end, 2)) for t in turns]


def test_the_second_pass_labels_a_voice_before_it_spoke_enough_to_be_a_speaker():
    audio = tone_conversation(EARLY_WORDS)
    once, first = diarize_array(fake_frontend(), audio, SLOW_TO_OPEN, chunk=5.0, passes=1)
    twice, second = diarize_array(fake_frontend(), audio, SLOW_TO_OPEN, chunk=5.0, passes=2)
    # one stream gives B's early words to A: B was not a speaker before 18.8 s
    assert spans(once) == [("SPEAKER_00", 0.0, 18.8), ("SPEAKER_01", 18.8, 24.8)]
    assert spans(twice) == [("SPEAKER_00", 0.0, 6.0), ("SPEAKER_01", 6.0, 6.8),
                            ("SPEAKER_00", 6.8, 18.8), ("SPEAKER_01", 18.8, 24.8)]
    # the second pass holds the first pass's voices under the same labels
    assert len(first._memory) == len(second._memory) == 2
    assert np.allclose(second._memory.centroids, first._memory.centroids, atol=0.05)
    assert second.config.max_speakers == 2


def test_one_pass_gives_the_turns_of_one_stream():
    audio = tone_conversation(EARLY_WORDS)
    chunks = [audio[i: i + 80000] for i in range(0, len(audio), 80000)]
    streamed, _, _ = run_chunks(fake_frontend(), chunks, SLOW_TO_OPEN)
    once, _, _ = run_passes(fake_frontend(), lambda: iter(chunks), SLOW_TO_OPEN, passes=1)
    assert spans(once) == spans(streamed)


def test_more_passes_keep_what_the_second_found():
    audio = tone_conversation(EARLY_WORDS)
    twice, _ = diarize_array(fake_frontend(), audio, SLOW_TO_OPEN, chunk=5.0, passes=2)
    most, _ = diarize_array(fake_frontend(), audio, SLOW_TO_OPEN, chunk=5.0,
                            passes=MAX_PASSES)
    assert spans(most) == spans(twice)


def test_speaker_bounds_hold_in_every_pass():
    # fewer voices than min_speakers asks for: the next pass keeps the caller's bounds
    one_voice = tone_conversation([(A, 15.0)])
    turns, engine = diarize_array(fake_frontend(), one_voice, StreamConfig(min_speakers=2),
                                  chunk=5.0, passes=2)
    assert (engine.config.min_speakers, engine.config.max_speakers) == (2, 20)
    assert spans(turns) == [("SPEAKER_00", 0.0, 15.0)]
    # num_speakers is a hard bound in the second pass too
    audio = tone_conversation(EARLY_WORDS)
    turns, engine = diarize_array(fake_frontend(), audio, StreamConfig(num_speakers=1),
                                  chunk=5.0, passes=2)
    assert {t.speaker for t in turns} == {"SPEAKER_00"}
    assert engine.config.max_speakers == 1


def test_silence_needs_no_second_pass():
    audio = np.zeros(16000 * 12, np.float32)
    calls = []

    def chunks():
        calls.append(1)
        return iter([audio])

    turns, regions, engine = run_passes(fake_frontend(), chunks, passes=2)
    assert turns == [] and regions == [] and len(calls) == 1
    assert engine.position == 12.0


@pytest.mark.parametrize("passes", [0, MAX_PASSES + 1, 1.5, "2", True])
def test_a_bad_number_of_passes_is_refused_before_any_work(passes):
    calls = []
    with pytest.raises(ConfigError, match="passes must be an integer from 1 to"):
        run_passes(fake_frontend(), lambda: calls.append(1) or iter([]), passes=passes)
    assert calls == []


def test_progress_spans_every_pass_and_ends_at_the_length():
    audio = tone_conversation(EARLY_WORDS)
    done: list[int] = []
    diarize_array(fake_frontend(), audio, SLOW_TO_OPEN, chunk=5.0, progress=done.append,
                  passes=2)
    assert done == sorted(done) and done[-1] == len(audio)
    # halfway when the first pass is through
    assert len(audio) // 2 in done


def test_a_file_is_opened_again_for_each_pass(tmp_path):
    audio = tone_conversation(EARLY_WORDS)
    path = tmp_path / "talk.wav"
    sf.write(path, audio, 16000, subtype="FLOAT")
    expected, _ = diarize_array(fake_frontend(), audio, SLOW_TO_OPEN, chunk=5.0, passes=2)
    with AudioFile(path, block_seconds=1.3) as file:
        turns, _, engine = run_file(fake_frontend(), file, SLOW_TO_OPEN, chunk=5.0, passes=2)
    assert spans(turns) == spans(expected) and len({t.speaker for t in turns}) == 2
    assert engine.position == len(audio) / 16000


@pytest.mark.parametrize("flags, passes", [([], FILE_PASSES), (["--passes", "1"], 1),
                                           (["--passes", "3"], 3)])
def test_the_diarize_command_streams_each_file_as_often_as_asked(tmp_path, monkeypatch,
                                                                  flags, passes):
    import streamer.filemode
    from streamer.cli import main

    seen = []

    def recording(*args, **kwargs):
        seen.append(args[4])
        return run_passes(*args, **kwargs)

    monkeypatch.setattr(streamer.filemode, "run_passes", recording)
    path = tmp_path / "talk.wav"
    sf.write(path, tone_conversation([(A, 3.0)]), 16000)
    assert main(["diarize", str(path), "--no-progress", "--rttm", str(tmp_path / "out.rttm"),
                 *flags]) == 0
    assert seen == [passes]


@pytest.mark.parametrize("bad", ["0", str(MAX_PASSES + 1), "two"])
def test_the_diarize_command_refuses_a_bad_number_of_passes(tmp_path, capsys, bad):
    from streamer.cli import main

    path = tmp_path / "talk.wav"
    sf.write(path, tone_conversation([(A, 3.0)]), 16000)
    with pytest.raises(SystemExit) as exit:
        main(["diarize", str(path), "--passes", bad])
    assert exit.value.code == 2 and "--passes" in capsys.readouterr().err


@pytest.fixture(scope="module")
def embedded():
    from streamer.presets import load_frontend

    return load_frontend("embedded")


def test_the_embedded_preset_replays_its_models_in_the_second_pass(embedded):
    """The second pass takes the VAD's and the window encoder's outputs from the first
    (it runs no model) and gives exactly the turns of a second pass that runs them."""
    from streamer.audio import load_audio

    audio = load_audio(DATA / "two_voices.wav")
    chunks = lambda: (audio[i: i + 80000] for i in range(0, len(audio), 80000))  # noqa: E731
    calls = []
    original = embedded.encoder_call

    def counting(*args):
        calls.append(1)
        return original(*args)

    embedded.encoder_call = counting
    try:
        run_passes(embedded, chunks, passes=1)
        encoded = len(calls)
        calls.clear()
        replayed, _, second = run_passes(embedded, chunks, passes=2)
        assert len(calls) == encoded  # the first pass only
    finally:
        del embedded.encoder_call
    # the same second pass with its models run again
    once = StreamingDiarizer(embedded, file_mode=True)
    once._keep_for_next_pass()
    run_engine(once, chunks())
    again = once._next_pass(None)
    assert again._stream.recording() is once._stream.recording()
    again._stream._replay = None
    recomputed, _ = run_engine(again, chunks())
    assert replayed == recomputed and len({t.speaker for t in replayed}) == 2
    assert len(second._memory) == len(once._memory)


def test_a_recording_from_other_audio_is_refused(embedded):
    from streamer.config import StreamConfig as Config

    short = embedded.stream(Config().resolve(10.0, 0.3, 0.5))
    short.record()
    _drive(embedded, short.analyze(np.zeros(16000, np.float32), 0.0))
    longer = embedded.stream(Config().resolve(10.0, 0.3, 0.5))
    longer.replay(short.recording())
    with pytest.raises(ValueError, match="it comes from other audio"):
        _drive(embedded, longer.analyze(np.zeros(32000, np.float32), 0.0))
    with pytest.raises(RuntimeError, match="before any audio"):
        short.record()
    with pytest.raises(RuntimeError, match="before any audio"):
        short.replay(short.recording())


def _drive(frontend, steps):
    """Run a front end's model calls as they come."""
    from streamer.models.calls import run_direct

    return run_direct(steps, frontend.models)


@pytest.mark.skipif(not (EVAL / "trn07.wav").exists(), reason="../shared/eval is absent")
def test_speech_before_any_claimed_frame_stays_the_first_speakers_in_the_second_pass(embedded):
    """In this meeting excerpt the first seconds of speech are too short for their
    buffers to embed; one pass gives them to the first speaker, and so must the second,
    though it knows the speakers from the start."""
    from streamer.audio import load_audio

    audio = load_audio(EVAL / "trn07.wav")
    once, _ = diarize_array(embedded, audio, chunk=5.0, passes=1)
    twice, _ = diarize_array(embedded, audio, chunk=5.0, passes=2)
    first = min(t.start for t in once)
    assert first < 10.0 and min(t.start for t in twice) == first
    assert sum(t.end - t.start for t in twice) >= 0.95 * sum(t.end - t.start for t in once)


def test_a_pipeline_streams_twice_unless_told_otherwise():
    from streamer import Pipeline

    pipeline = Pipeline(frontend=fake_frontend(), config=SLOW_TO_OPEN)
    audio = {"waveform": tone_conversation(EARLY_WORDS), "sample_rate": 16000}
    seen: list[float] = []

    def hook(step, artifact, *, file=None, total=None, completed=None):
        seen.append(completed)

    default = pipeline(audio, hook=hook)
    once = pipeline(audio, passes=1)
    assert [(s.start, s.end, k) for s, k in default] == [
        (0.0, 6.0, "SPEAKER_00"), (6.0, 6.8, "SPEAKER_01"), (6.8, 18.8, "SPEAKER_00"),
        (18.8, 24.8, "SPEAKER_01")]
    assert [(s.start, s.end, k) for s, k in once] == [
        (0.0, 18.8, "SPEAKER_00"), (18.8, 24.8, "SPEAKER_01")]
    assert seen == sorted(seen) and seen[-1] == 24.8 and 12.4 in seen
    with pytest.raises(ConfigError, match="passes"):
        pipeline(audio, passes=0)


def test_a_front_end_whose_analyses_ignore_the_speakers_is_replayed_whole():
    """The pyannote presets' buffer analyses do not depend on the stream's speakers: the
    second pass replays them (no model call) and gives the turns of one that runs the
    models again."""
    from streamer.models.frontend import SegmentationEmbeddingFrontend
    from tests.fakes import FakeEmbedding, FakeSegmentation

    calls = []

    class Counting(FakeSegmentation):
        def __call__(self, waveforms):
            calls.append(1)
            return super().__call__(waveforms)

    frontend = SegmentationEmbeddingFrontend(Counting(), FakeEmbedding(), name="fake",
                                             delta_new=0.5, speech_threshold=0.5)
    assert frontend.analysis_uses_speakers is False
    audio = tone_conversation(EARLY_WORDS)
    chunks = lambda: (audio[i: i + 80000] for i in range(0, len(audio), 80000))  # noqa: E731
    once = StreamingDiarizer(frontend, SLOW_TO_OPEN, file_mode=True)
    once._keep_for_next_pass()
    run_engine(once, chunks())
    first_pass = len(calls)
    replayed, _, _ = run_passes(frontend, chunks, SLOW_TO_OPEN, passes=2)
    assert first_pass > 0 and len(calls) == 2 * first_pass  # its first pass only
    again = once._next_pass(SLOW_TO_OPEN)
    again._replaying = None
    recomputed, _ = run_engine(again, chunks())
    assert spans(replayed) == spans(recomputed) == [
        ("SPEAKER_00", 0.0, 6.0), ("SPEAKER_01", 6.0, 6.8), ("SPEAKER_00", 6.8, 18.8),
        ("SPEAKER_01", 18.8, 24.8)]
