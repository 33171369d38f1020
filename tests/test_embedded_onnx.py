"""The embedded preset with ``backend="onnx"``: GE2E exported once and run by ONNX Runtime."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer import presets
from streamer.audio import load_audio
from streamer.cliargs import add_model_arguments, frontend_from_args
from streamer.errors import ModelLoadError
from streamer.models.pyannote import onnx as onnx_export
from streamer.engine import diarize_array
from streamer.models.embedded import EmbeddedFrontend
from streamer.models.ge2e import OnnxVoiceEncoder, VoiceEncoder
from streamer.presets import load_frontend, pyannote_backend

from tests.paths import DATA

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.usefixtures("onnx_cache_env")]


@pytest.fixture(scope="module")
def torch_frontend() -> EmbeddedFrontend:
    return EmbeddedFrontend()


@pytest.fixture(scope="module")
def onnx_frontend(torch_frontend: EmbeddedFrontend, onnx_cache: Path) -> EmbeddedFrontend:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STREAMER_ONNX_CACHE", str(onnx_cache))
        return EmbeddedFrontend(torch_frontend.settings, torch_frontend.vad,
                                torch_frontend.encoder, backend="onnx")


def test_onnx_encoder_embeds_padded_batches_as_torch_does(torch_frontend, onnx_frontend):
    """Rows of one length, of mixed lengths (each row's own last frame ends it, as with
    torch's packed sequences) and of one frame; an empty batch."""
    assert isinstance(onnx_frontend.encoder, OnnxVoiceEncoder)
    encoder = torch_frontend.encoder
    rng = np.random.default_rng(3)
    mels = np.abs(rng.normal(size=(3, 150, 40))).astype(np.float32)
    for lengths in ([150, 150, 150], [150, 61, 7], [1, 1, 1], [40, 40, 40]):
        lengths = np.array(lengths)
        expected = encoder.embed_padded(mels, lengths)
        got = onnx_frontend.encoder.embed_padded(mels, lengths)
        assert got.shape == (3, VoiceEncoder.dimension)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # Padding past a row's length is not read: other values there change nothing.
    noisy = mels.copy()
    noisy[1, 61:] = 50.0
    np.testing.assert_allclose(onnx_frontend.encoder.embed_padded(noisy, np.array([150, 61, 7])),
                               encoder.embed_padded(mels, np.array([150, 61, 7])), atol=1e-5)
    assert onnx_frontend.encoder.embed_padded(mels[:0], np.zeros(0, int)).shape == (0, 256)


def test_onnx_backend_diarizes_as_torch_does(torch_frontend, onnx_frontend):
    audio = load_audio(DATA / "two_voices.wav")
    expected, _ = diarize_array(torch_frontend, audio, chunk=0.5)
    got, _ = diarize_array(onnx_frontend, audio, chunk=0.5)
    assert len({turn.speaker for turn in expected}) == 2
    assert [(t.speaker, round(t.start, 2), round(t.end, 2)) for t in got] == \
        [(t.speaker, round(t.start, 2), round(t.end, 2)) for t in expected]
    assert onnx_frontend.describe()["backend"] == "onnx"
    assert torch_frontend.describe()["backend"] == "torch"


def test_the_exported_graph_is_cached(onnx_frontend, onnx_cache: Path):
    graphs = sorted(onnx_cache.glob("ge2e-*.onnx"))
    assert len(graphs) == 1
    written = graphs[0].stat().st_mtime_ns
    again = load_frontend("embedded", backend="onnx")
    assert again.backend == "onnx"
    assert sorted(onnx_cache.glob("ge2e-*.onnx")) == graphs
    assert graphs[0].stat().st_mtime_ns == written


def test_unknown_backend_is_refused(torch_frontend):
    with pytest.raises(ValueError, match="backend"):
        EmbeddedFrontend(torch_frontend.settings, torch_frontend.vad, torch_frontend.encoder,
                         backend="tensorrt")


def test_auto_backend_runs_ge2e_in_onnx_runtime(onnx_cache: Path, monkeypatch):
    """``auto`` (the default of load_frontend, the Pipeline and the CLI) gives the embedded
    preset ONNX Runtime where it is installed; the pyannote presets stay in torch."""
    monkeypatch.setenv("STREAMER_ONNX_CACHE", str(onnx_cache))
    frontend = load_frontend("embedded")
    assert isinstance(frontend.encoder, OnnxVoiceEncoder)
    assert frontend.describe()["backend"] == "onnx"
    assert load_frontend("embedded", backend="torch").backend == "torch"
    assert pyannote_backend("auto") == "torch"
    assert pyannote_backend("onnx") == "onnx"
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert parser.parse_args([]).backend == "auto"
    assert frontend_from_args(parser.parse_args([])).backend == "onnx"


def test_auto_backend_falls_back_to_torch(monkeypatch, caplog):
    """Without onnxruntime, or when the export fails, ``auto`` runs GE2E in torch (an
    explicit ``onnx`` still fails with what to install)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(presets, "onnx_available", lambda: False)
    assert load_frontend("embedded").backend == "torch"
    with pytest.raises(ModelLoadError, match="pip install onnx onnxruntime"):
        load_frontend("embedded", backend="onnx")
    monkeypatch.undo()

    def failing(*args, **kwargs):
        raise ModelLoadError("ONNX export failed (RuntimeError: no)")

    monkeypatch.setattr(onnx_export, "onnx_runner", failing)
    with caplog.at_level(logging.WARNING, logger="streamer.presets"):
        frontend = load_frontend("embedded")
    assert frontend.backend == "torch"
    assert "ONNX export failed" in caplog.text
