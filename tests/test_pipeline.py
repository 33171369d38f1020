"""The Python API: Pipeline on paths and in-memory waveforms, its result and hooks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import streamer
from streamer import (AudioFileError, AudioFormatError, ConfigError, Diarization, Pipeline,
                      ProgressHook, Segment, StreamingDiarizer)
from streamer.rttm import read_rttm
from tests.fakes import fake_frontend, tone_conversation
from tests.test_outputs import overlapping_conversation

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(frontend=fake_frontend())


def two_tones() -> np.ndarray:
    return tone_conversation([(300.0, 4.0), (None, 0.5), (700.0, 4.0), (None, 0.5),
                              (300.0, 3.0)])


def spans(result: Diarization) -> list[tuple[str, float, float]]:
    return [(speaker, round(s.start, 1), round(s.end, 1)) for s, speaker in result]


def test_a_waveform_gives_the_turns_of_the_streaming_engine(pipeline) -> None:
    audio = two_tones()
    result = pipeline({"waveform": audio, "sample_rate": 16000, "uri": "tones"})
    engine = StreamingDiarizer(fake_frontend())
    expected = [t for t in engine.feed(audio) + engine.flush()
                if isinstance(t, streamer.Turn) and t.final]
    assert [(s.start, s.end, speaker) for s, speaker in result] == [
        (t.start, t.end, t.speaker) for t in expected]
    assert result.labels == ["SPEAKER_00", "SPEAKER_01"]
    assert spans(result) == [("SPEAKER_00", 0.0, 4.0), ("SPEAKER_01", 4.5, 8.5),
                             ("SPEAKER_00", 9.0, 12.0)]
    assert isinstance(next(iter(result))[0], Segment)
    assert result.duration == pytest.approx(len(audio) / 16000)
    assert result.speaker_embeddings.shape == (2, 8)
    assert np.allclose(np.linalg.norm(result.speaker_embeddings, axis=1), 1.0, atol=1e-5)
    assert set(result.embeddings) == set(result.labels)


@pytest.mark.parametrize("layout", ["int16 44.1 kHz stereo channels-first",
                                    "torch float 48 kHz (1, time)", "float64 (time, 2)"])
def test_other_rates_dtypes_and_layouts_give_the_same_speakers(pipeline, layout) -> None:
    import soxr

    audio = two_tones()
    if layout.startswith("int16"):
        signal = soxr.resample(audio, 16000, 44100)
        waveform, rate = (np.stack([signal, signal]) * 32767).astype(np.int16), 44100
    elif layout.startswith("torch"):
        waveform, rate = torch.from_numpy(soxr.resample(audio, 16000, 48000))[None], 48000
    else:
        waveform, rate = np.stack([audio, audio], axis=1).astype(np.float64), 16000
    result = pipeline({"waveform": waveform, "sample_rate": rate})
    reference = pipeline({"waveform": audio, "sample_rate": 16000})
    assert [speaker for _, speaker in result] == [speaker for _, speaker in reference]
    for (a, _), (b, _) in zip(result, reference):
        assert a.start == pytest.approx(b.start, abs=0.1)
        assert a.end == pytest.approx(b.end, abs=0.1)


def test_a_path_is_decoded_as_it_goes_and_named_by_its_file(pipeline, tmp_path) -> None:
    path = tmp_path / "meeting one.wav"
    sf.write(path, two_tones(), 16000)
    result = pipeline(str(path))
    assert result.uri == "meeting one" and result.audio == "meeting one.wav"
    assert spans(result) == spans(pipeline({"waveform": two_tones(), "sample_rate": 16000}))
    assert spans(pipeline({"audio": path})) == spans(result)
    rttm = tmp_path / "out.rttm"
    rttm.write_text(result.to_rttm())
    assert [(spk, round(s, 1), round(e, 1)) for s, e, spk in
            read_rttm(rttm)["meeting_one"]] == spans(result)  # RTTM has no spaces in ids


def test_the_overlap_aware_diarization_sits_next_to_the_exclusive_one(pipeline) -> None:
    result = pipeline({"waveform": overlapping_conversation(), "sample_rate": 16000})
    assert pipeline.detects_overlap and result.overlap_aware
    exclusive = list(result.exclusive_speaker_diarization)
    regular = list(result.speaker_diarization)
    assert all(a.end <= b.start + 1e-9 for (a, _), (b, _) in zip(exclusive, exclusive[1:]))
    first, second = [[s for s, spk in regular if spk == label] for label in result.labels]
    assert first[0].end > second[0].start  # the two voices overlap in the regular one
    assert [(round(s.start, 1), round(s.end, 1)) for s in result.overlap] == [(6.0, 9.0)]
    assert result.to_rttm(regular=True).count("\n") == len(regular)
    document = result.to_json()
    assert document["regular_segments"][0] == {"speaker": "SPEAKER_00", "start": 0.0,
                                               "end": 9.0}
    assert document["overlap"] == [{"start": 6.0, "end": 9.0}]


def test_json_shapes(pipeline) -> None:
    result = pipeline({"waveform": two_tones(), "sample_rate": 16000, "uri": "x"})
    document = json.loads(json.dumps(result.to_json()))
    assert document["num_speakers"] == 2 and document["audio"] == "x"
    assert document["segments"][1] == {"speaker": "SPEAKER_01", "start": 4.5, "end": 8.5}
    hosted = result.to_json("meronym")
    assert hosted["speakers"]["count"] == 2
    assert hosted["segments"][1] == {"speaker": "SPEAKER_01", "start": "0:00:04.500000",
                                     "stop": "0:00:08.500000"}
    with pytest.raises(ValueError, match="unknown JSON format"):
        result.to_json("xml")


def test_speaker_counts_and_config_overrides_reach_the_engine(pipeline) -> None:
    result = pipeline({"waveform": two_tones(), "sample_rate": 16000}, max_speakers=1,
                      latency=3.0)
    assert result.labels == ["SPEAKER_00"]
    assert result.config["max_speakers"] == 1 and result.config["latency"] == 3.0
    fixed = pipeline({"waveform": two_tones(), "sample_rate": 16000}, num_speakers=2)
    assert fixed.config["min_speakers"] == fixed.config["max_speakers"] == 2
    with pytest.raises(ConfigError, match="latency"):
        pipeline({"waveform": two_tones(), "sample_rate": 16000}, latency=-1)
    with pytest.raises(ConfigError, match="unknown config field"):
        pipeline({"waveform": two_tones(), "sample_rate": 16000}, speed=2)


def test_hooks_see_the_progress_of_the_call(pipeline, capsys) -> None:
    calls = []
    audio = two_tones()
    pipeline({"waveform": audio, "sample_rate": 16000, "uri": "t"},
             hook=lambda step, artifact, **kw: calls.append((step, kw)))
    assert {step for step, _ in calls} == {"diarization"}
    done = [kw["completed"] for _, kw in calls]
    assert done == sorted(done) and done[-1] == pytest.approx(len(audio) / 16000)
    assert calls[0][1]["total"] == pytest.approx(len(audio) / 16000)
    assert calls[0][1]["file"] == "t"
    with ProgressHook() as hook:
        pipeline({"waveform": audio, "sample_rate": 16000}, hook=hook)
    assert "diarization" in capsys.readouterr().err


@pytest.mark.parametrize("audio,message", [
    (np.zeros(16000), "file path or a dict"),
    ({"waveform": np.zeros(16000)}, "needs its 'sample_rate'"),
    ({"sample_rate": 16000}, "needs 'waveform' and 'sample_rate'"),
    ({"waveform": np.zeros(16000), "sample_rate": 16000, "rate": 1}, "unknown key"),
    ({"waveform": np.zeros((2, 3, 16000)), "sample_rate": 16000}, "shape"),
    ({"waveform": np.array(["a", "b"]), "sample_rate": 16000}, "dtype"),
    ({"waveform": np.zeros(16000), "sample_rate": 16000.5}, "sample_rate"),
    ({"waveform": np.full(16000, np.nan), "sample_rate": 16000}, "NaN"),
])
def test_what_cannot_be_audio_is_refused_before_any_work(pipeline, audio, message) -> None:
    with pytest.raises(AudioFormatError, match=message):
        pipeline(audio)


def test_a_missing_file_is_refused(pipeline, tmp_path) -> None:
    with pytest.raises(AudioFileError):
        pipeline(tmp_path / "missing.wav")


def test_stream_gives_an_engine_on_the_same_models(pipeline) -> None:
    engine = pipeline.stream(latency=1.0)
    assert engine.frontend is pipeline.frontend and engine.config.latency == 1.0
    turns = [t for t in engine.feed(two_tones()) + engine.flush() if t.final]
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]


def test_the_embedded_preset_diarizes_speech_without_overlap() -> None:
    pipeline = Pipeline("embedded")
    result = pipeline(DATA / "two_voices.wav")
    assert len(result.labels) == 2 and not result.overlap_aware and result.overlap is None
    assert result.speaker_diarization is result.exclusive_speaker_diarization
    assert result.speaker_embeddings.shape == (2, 256)
    with pytest.raises(ConfigError, match="no overlapped speech model"):
        pipeline(DATA / "two_voices.wav", outputs=["regular"])


def test_pyannote_models_from_files(tmp_path) -> None:
    from tests.checkpoints import write_checkpoint

    pipeline = Pipeline(segmentation=str(write_checkpoint(tmp_path / "s.bin", "segmentation-3.0")),
                        embedding=str(write_checkpoint(tmp_path / "e.bin", "wespeaker")))
    assert pipeline.describe()["preset"] == "pyannote" and pipeline.detects_overlap
    result = pipeline({"waveform": two_tones(), "sample_rate": 16000})
    assert result.overlap_aware and result.duration == pytest.approx(12.0)
    with pytest.raises(ConfigError, match="unknown preset"):
        Pipeline("nemo")


def test_the_model_card_tasks_of_the_embedded_preset() -> None:
    pipeline = Pipeline("embedded")
    reference = read_rttm(DATA / "two_voices.rttm")["two_voices"]
    speech = pipeline.vad(DATA / "two_voices.wav")
    assert speech and all(isinstance(s, Segment) for s in speech)
    found = sum(max(0.0, min(e, s.end) - max(b, s.start)) for b, e, _ in reference
                for s in speech)
    assert found >= 0.85 * sum(e - b for b, e, _ in reference)
    with pytest.raises(ConfigError, match="no overlapped speech model"):
        pipeline.osd(DATA / "two_voices.wav")
    turns = {}
    for start, end, speaker in reference:
        if end - start >= 2.0:
            turns.setdefault(speaker, []).append(
                pipeline.embed(DATA / "two_voices.wav", start=start, end=end))
    (a1, a2, *_), (b1, *_) = turns.values()
    assert a1.shape == (256,) and np.linalg.norm(a1) == pytest.approx(1.0, abs=1e-5)
    assert streamer.cosine_distance(a1, a2) < streamer.cosine_distance(a1, b1)
    segments, vectors = pipeline.embed_sliding(DATA / "two_voices.wav", window=3.0, step=1.0)
    assert segments.shape[1] == 2 and vectors.shape == (len(segments), 256)
    assert segments[1, 0] - segments[0, 0] == pytest.approx(1.0)


def test_the_model_card_tasks_of_pyannote_models(tmp_path) -> None:
    from tests.checkpoints import write_checkpoint

    pipeline = Pipeline(segmentation=str(write_checkpoint(tmp_path / "s.bin", "segmentation-2")),
                        embedding=str(write_checkpoint(tmp_path / "e.bin", "wespeaker")))
    audio = {"waveform": two_tones(), "sample_rate": 16000}
    scores = pipeline.scores(audio)
    speakers = pipeline.frontend.segmentation.num_speakers
    assert scores.data.shape[1] == len(scores.labels) == speakers and scores.timing.step > 0
    assert len(scores.data) * scores.timing.step == pytest.approx(12.0, abs=0.1)
    everything = pipeline.vad(audio, onset=0.0, offset=0.0)  # random weights: all speech
    assert everything and everything[0].start < 0.1 and everything[-1].end > 11.9
    assert pipeline.vad(audio, onset=1.0, offset=1.0) == []
    assert isinstance(pipeline.osd(audio, tuned_on="ami"), list)
    baseline = streamer.Annotation([(Segment(0.0, 4.0), "A"), (Segment(4.5, 8.5), "B"),
                                    (Segment(9.0, 12.0), "A")])
    redrawn = pipeline.resegment(audio, baseline, onset=0.0, offset=0.0)
    assert set(redrawn.labels()) <= {"A", "B"} and len(redrawn) > 0
    dimension = pipeline.frontend.embedding.dimension
    assert pipeline.embed(audio, start=1.0, end=3.0).shape == (dimension,)
    with pytest.raises(ConfigError, match="tuned"):
        pipeline.vad(audio, tuned_on="librispeech")
