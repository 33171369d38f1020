"""Command-line flags shared by ``streamer diarize``, ``eval``, ``bench`` and ``serve``."""
from __future__ import annotations

import argparse
from typing import Any

from streamer.config import StreamConfig
from streamer.models.base import Frontend


def add_model_arguments(parser: argparse.ArgumentParser,
                        threads: bool = True) -> argparse._ArgumentGroup:
    """Model flags; ``threads=False`` leaves out ``--threads`` (the server sets threads
    per worker thread instead)."""
    group = parser.add_argument_group("models")
    group.add_argument("--preset", default=None, choices=["embedded", "pyannote"],
                       help="model preset (default: embedded, or pyannote when "
                            "--segmentation/--embedding is given)")
    group.add_argument("--segmentation", default=None, metavar="SRC",
                       help="pyannote segmentation model: pytorch_model.bin, a folder "
                            "holding one, or hf:REPO for the Hugging Face hub (e.g. "
                            "hf:pyannote/segmentation-3.0)")
    group.add_argument("--embedding", default=None, metavar="SRC",
                       help="pyannote embedding model: file, folder or hf:REPO "
                            "(e.g. hf:pyannote/wespeaker-voxceleb-resnet34-LM)")
    group.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                       help="where torch models run (default %(default)s)")
    group.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                       help="torch, or ONNX Runtime for pyannote models (default %(default)s)")
    group.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                       help="bf16 runs the WeSpeaker ResNet embedding model in bfloat16 "
                            "with torch: ~3.5x faster on CPUs with AMX, embeddings within "
                            "~0.4%% of fp32 (default %(default)s: exact)")
    group.add_argument("--revision", default=None, help="hub revision of pyannote models")
    group.add_argument("--cache-dir", default=None, help="hub download cache folder")
    group.add_argument("--hf-token", default=None,
                       help="Hugging Face token for gated repos (default: $HF_TOKEN)")
    if threads:
        group.add_argument("--threads", type=int, default=1,
                           help="torch threads for model calls (default 1: the models are "
                                "small and sequential, one thread is fastest on a shared "
                                "CPU)")
    return group


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stream")
    group.add_argument("--latency", type=float, default=None,
                       help="seconds between audio and its final decision (default 2.0)")
    group.add_argument("--step", type=float, default=None, help="buffer step in seconds (0.5)")
    group.add_argument("--num-speakers", type=int, default=None, help="known speaker count")
    group.add_argument("--min-speakers", type=int, default=None, help="lower bound")
    group.add_argument("--max-speakers", type=int, default=None, help="upper bound (20)")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="any other stream setting, e.g. --set delta_new=0.8")


def frontend_from_args(args: argparse.Namespace) -> Frontend:
    import torch

    from streamer.presets import load_frontend

    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)

    hub: dict[str, Any] = {}
    for key in ("revision", "cache_dir"):
        if getattr(args, key, None):
            hub[key] = getattr(args, key)
    if getattr(args, "hf_token", None):
        hub["token"] = args.hf_token
    return load_frontend(args.preset, args.segmentation, args.embedding, args.device,
                         args.backend, precision=getattr(args, "precision", "fp32"), **hub)


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    values: dict[str, Any] = {}
    for key in ("latency", "step", "num_speakers", "min_speakers", "max_speakers"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    for item in getattr(args, "set", []) or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        values[key.strip()] = _parse_value(raw.strip())
    return StreamConfig.from_dict(values)


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw
