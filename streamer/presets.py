"""Model presets: which front end a stream runs, and where its weights come from."""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

from streamer.errors import ConfigError, ModelLoadError
from streamer.models.base import Frontend

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "embedded": {
        "description": "Silero VAD + GE2E voice embeddings; weights ship inside the "
                       "silero-vad and resemblyzer PyPI packages (no download, no token)",
        "segmentation": "silero-vad package: silero_vad/data/silero_vad.jit",
        "embedding": "resemblyzer package: resemblyzer/pretrained.pt",
    },
    "accurate": {
        "description": "pyannote segmentation-3.0 + CAM++ speaker embeddings: trained "
                       "segmentation with overlapped speech, voices told apart on real "
                       "speech; weights ship inside streamer (no download, no token); "
                       "some 20x the compute of embedded",
        "segmentation": "packaged:segmentation-3.0",
        "embedding": "packaged:campplus",
    },
    "pyannote": {
        "description": "pyannote segmentation + WeSpeaker embedding models of your choice; "
                       "weights from the Hugging Face hub or a local folder",
        "segmentation": "hf:pyannote/segmentation-3.0",
        "embedding": "hf:pyannote/wespeaker-voxceleb-resnet34-LM",
    },
}
DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("auto", "torch", "onnx")


def load_frontend(preset: str | None = None, segmentation: str | None = None,
                  embedding: str | None = None, device: str = "cpu",
                  backend: str = "auto", precision: str = "fp32", compile: bool = False,
                  **hub: Any) -> Frontend:
    """Load the models of a preset once; the result is shared by every stream.

    ``segmentation`` / ``embedding`` (a file, a folder, ``hf:<repo id>`` or
    ``packaged:<name>``, see :mod:`streamer.models.packaged`) select pyannote-style models
    and imply ``preset="pyannote"``; the missing one takes the preset's default.
    ``backend="auto"`` (the default) runs the packaged models in ONNX Runtime on the CPU:
    the embedded preset's GE2E, and the accurate preset's segmentation-3.0 and CAM++ in
    fp32 without ``compile``; both diarize as with torch, faster. It runs them in torch
    where ONNX Runtime is not installed or the export fails (with a warning), and runs
    models given as sources (the pyannote preset, or ``segmentation``/``embedding``), on
    CUDA, in bf16 or compiled, in torch.
    ``precision="bf16"`` runs the pyannote embedding model in bfloat16 (torch backend).
    ``compile=True`` runs its trunk through ``torch.compile``, compiled here on a chunk of
    the segmentation's length (see :func:`streamer.models.pyannote.load_embedding`).
    ``hub`` passes ``revision``, ``cache_dir`` and ``token`` to hub downloads.
    """
    if preset is None:
        preset = "pyannote" if (segmentation or embedding) else "embedded"
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    from streamer.models.pyannote.device import check_precision

    check_precision(precision, pyannote_backend(backend))
    if preset == "embedded":
        if segmentation or embedding:
            raise ConfigError("--segmentation/--embedding need the pyannote preset")
        if precision != "fp32":
            raise ConfigError("--precision bf16 applies to the pyannote embedding models; "
                              "the embedded preset runs in fp32")
        if compile:
            raise ConfigError("--compile applies to the pyannote embedding models, not to "
                              "the embedded preset")
        if device == "cuda":
            raise ConfigError("--device cuda applies to the pyannote presets: the embedded "
                              "preset's small models run on the CPU")
        return _load_embedded(backend)
    sources = (segmentation or PRESETS[preset]["segmentation"],
               embedding or PRESETS[preset]["embedding"])
    if backend == "auto":
        backend = "torch"
        if (preset == "accurate" and not (segmentation or embedding) and precision == "fp32"
                and not compile and _on_cpu(device) and onnx_available()):
            try:
                return _load_pyannote(*sources, device, "onnx", precision, hub, preset)
            except ModelLoadError as error:
                logger.warning("the %s preset runs in torch: %s", preset, error)
    return _load_pyannote(*sources, device, backend, precision, hub, preset, compile)


def _on_cpu(device: str) -> bool:
    from streamer.models.pyannote.device import resolve_device

    return resolve_device(device).type == "cpu"


def pyannote_backend(backend: str) -> str:
    """The backend that ``backend`` means for pyannote models loaded on their own
    (segmentation or embedding tasks): ``auto`` is torch."""
    return "torch" if backend == "auto" else backend


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ONNX exporter's package can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def _load_embedded(backend: str) -> Frontend:
    from streamer.models.embedded import EmbeddedFrontend

    if backend != "auto":
        return EmbeddedFrontend(backend=backend)
    frontend = EmbeddedFrontend()
    if not onnx_available():
        logger.info("onnx/onnxruntime not installed: GE2E runs in torch")
        return frontend
    try:
        # The torch encoder's weights are what the graph is exported from.
        return EmbeddedFrontend(frontend.settings, frontend.vad, frontend.encoder,
                                backend="onnx")
    except ModelLoadError as error:
        logger.warning("GE2E stays in torch: %s", error)
        return frontend


def _load_pyannote(segmentation: str, embedding: str, device: str, backend: str,
                   precision: str, hub: dict[str, Any], name: str = "pyannote",
                   compile: bool = False) -> Frontend:
    try:
        from streamer.models.pyannote import load_embedding, load_segmentation
    except ImportError as error:  # pragma: no cover - the package ships with streamer
        raise ModelLoadError(f"the pyannote models are unavailable: {error}") from None
    from streamer.models.frontend import SegmentationEmbeddingFrontend
    from streamer.models.pyannote.embedding import PyannoteEmbedding

    seg = load_segmentation(segmentation, device=device, backend=backend, **hub)
    emb = load_embedding(embedding, device=device, backend=backend, precision=precision,
                         compile=compile, **hub)
    if isinstance(emb, PyannoteEmbedding) and (compile or emb.fixed_shapes):
        emb.warm_up(int(round(seg.chunk_duration * seg.sample_rate)))
    logger.info("loaded segmentation %s and embedding %s (%s, %s)", segmentation, embedding,
                device, backend)
    return SegmentationEmbeddingFrontend(
        seg, emb, name=name,
        sources={"segmentation": segmentation, "embedding": embedding})
