"""What the ``streamer`` subcommands share: model and stream flags, model loading from
them, and output files opened before the work."""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import IO, Any, Iterator

from streamer.config import FILE_PASSES, MAX_PASSES, StreamConfig
from streamer.errors import ConfigError
from streamer.models.base import Frontend


def add_model_arguments(parser: argparse.ArgumentParser,
                        threads: bool = True) -> argparse._ArgumentGroup:
    """Model flags; ``threads=False`` leaves out ``--threads`` (the server sets threads
    per worker thread instead)."""
    group = parser.add_argument_group("models")
    from streamer.presets import PRESETS

    group.add_argument("--preset", default=None, choices=list(PRESETS),
                       help="model preset (default: embedded, or pyannote when "
                            "--segmentation/--embedding is given); accurate: packaged "
                            "segmentation-3.0 + CAM++")
    group.add_argument("--segmentation", default=None, metavar="SRC",
                       help="pyannote segmentation model: pytorch_model.bin, a folder "
                            "holding one, or hf:REPO for the Hugging Face hub (e.g. "
                            "hf:pyannote/segmentation-3.0), or packaged:segmentation-3.0")
    group.add_argument("--embedding", default=None, metavar="SRC",
                       help="pyannote embedding model: file, folder or hf:REPO "
                            "(e.g. hf:pyannote/wespeaker-voxceleb-resnet34-LM), or "
                            "packaged:campplus")
    group.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                       help="where torch models run (default %(default)s)")
    group.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                       help="torch, or ONNX Runtime (exported once, cached): the pyannote models, CAM++ "
                            "or the embedded preset's GE2E; auto (default): ONNX Runtime for "
                            "the packaged presets (embedded; accurate on the CPU in fp32), "
                            "torch for models given as sources")
    group.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                       help="bf16 runs the WeSpeaker ResNet embedding model in bfloat16 "
                            "with torch: faster on CPUs with AMX and on GPUs, embeddings "
                            "close to fp32's (figures: the README; default %(default)s: "
                            "exact)")
    group.add_argument("--compile", action="store_true",
                       help="run the pyannote embedding model's trunk through torch.compile "
                            "(torch backend): faster on GPUs in bf16 (figures: the README); "
                            "compiling takes seconds to a minute at start-up")
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


def add_stream_arguments(parser: argparse.ArgumentParser, file_mode: bool = False) -> None:
    """The stream settings; ``file_mode``: the command diarizes whole files, where the
    default latency is the buffer's duration (see :class:`streamer.engine.StreamingDiarizer`)."""
    group = parser.add_argument_group("stream")
    group.add_argument("--latency", type=float, default=None,
                       help="seconds between audio and its final decision (default: the "
                            "buffer's duration, as nobody waits for a file's turns; 2 gives "
                            "the turns of a live stream)" if file_mode else
                       "seconds between audio and its final decision (default 2.0)")
    group.add_argument("--step", type=float, default=None, help="buffer step in seconds (0.5)")
    if file_mode:
        group.add_argument("--passes", type=int, default=FILE_PASSES,
                           choices=range(1, MAX_PASSES + 1), metavar="N",
                           help=f"times each file is streamed (default {FILE_PASSES}): the "
                                "first pass finds the speakers, each further one streams "
                                "the file again knowing them from its start; 1 gives the "
                                "turns of one stream")
    group.add_argument("--num-speakers", type=int, default=None, help="known speaker count")
    group.add_argument("--min-speakers", type=int, default=None, help="lower bound")
    group.add_argument("--max-speakers", type=int, default=None, help="upper bound (20)")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="any other stream setting, e.g. --set delta_new=0.8")


def frontend_from_args(args: argparse.Namespace) -> Frontend:
    """The preset's front end (segmentation and embedding models) from the model flags."""
    from streamer.presets import load_frontend

    _set_threads(args)
    return load_frontend(args.preset, args.segmentation, args.embedding, args.device,
                         args.backend, precision=getattr(args, "precision", "fp32"),
                         compile=getattr(args, "compile", False),
                         **hub_options(args))


def preset_of(args: argparse.Namespace) -> str:
    """The preset the model flags select (--segmentation/--embedding imply pyannote)."""
    return args.preset or ("pyannote" if args.segmentation or args.embedding else "embedded")


def segmentation_from_args(args: argparse.Namespace) -> Any:
    """The pyannote segmentation model alone (tasks that need no embedding model load or
    download none); the embedded preset's whole front end."""
    if preset_of(args) == "embedded":
        return frontend_from_args(args)  # refuses the pyannote-only flags too
    from streamer.models.pyannote import load_segmentation
    from streamer.presets import PRESETS, pyannote_backend

    _set_threads(args)
    return load_segmentation(args.segmentation or PRESETS[preset_of(args)]["segmentation"],
                             device=args.device, backend=pyannote_backend(args.backend),
                             **hub_options(args))


def embedding_from_args(args: argparse.Namespace) -> tuple[Any, str]:
    """The pyannote embedding model alone and its source (tasks that need no segmentation
    model load or download none); for the embedded preset, its front end and name."""
    if preset_of(args) == "embedded":
        return frontend_from_args(args), "embedded"
    from streamer.models.pyannote import load_embedding
    from streamer.presets import PRESETS, pyannote_backend

    _set_threads(args)
    source = args.embedding or PRESETS[preset_of(args)]["embedding"]
    return load_embedding(source, device=args.device, backend=pyannote_backend(args.backend),
                          precision=getattr(args, "precision", "fp32"),
                          **hub_options(args)), source


def hub_options(args: argparse.Namespace) -> dict[str, Any]:
    """``revision``, ``cache_dir`` and ``token`` of hub downloads, where given."""
    hub: dict[str, Any] = {}
    for key, flag in (("revision", "revision"), ("cache_dir", "cache_dir"),
                      ("token", "hf_token")):
        if getattr(args, flag, None):
            hub[key] = getattr(args, flag)
    return hub


def _set_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


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
    if getattr(args, "voiceprints", None):
        from streamer.voiceprints import read_voiceprints

        values["known_speakers"] = read_voiceprints(args.voiceprints)
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


@contextlib.contextmanager
def open_outputs(paths: dict[str, str | None]) -> Iterator[dict[str, IO[str]]]:
    """The output files, opened before the work so that a bad path fails at once rather
    than after an hour of audio. They are opened without truncating (an old result
    survives a failed run) and emptied just before writing; a file this run created is
    removed if the run fails."""
    files: dict[str, IO[str]] = {}
    created: list[str] = []
    done = False
    try:
        for flag, path in paths.items():
            if not path:
                continue
            if any(os.path.exists(path) and os.path.samefile(path, f.name)
                   for f in files.values()):
                raise ConfigError(f"{flag} {path}: the same file as another output")
            existed = os.path.lexists(path)
            try:
                files[flag] = open(path, "a", encoding="utf-8")
            except OSError as error:
                raise ConfigError(
                    f"cannot write {flag} {path}: {_os_reason(error, path)}") from None
            if not existed:
                created.append(path)
        yield files
        done = True
    finally:
        for file in files.values():
            file.close()
        if not done:
            for path in created:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def emptied(file: IO[str]) -> IO[str]:
    """``file`` truncated, just before the result is written into it."""
    if file.seekable():
        file.truncate(0)
    return file


def _os_reason(error: OSError, path: str) -> str:
    if isinstance(error, FileNotFoundError):
        return f"no such folder {os.path.dirname(path) or '.'}"
    if isinstance(error, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)
