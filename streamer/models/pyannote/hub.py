"""Where weights come from: a local ``pytorch_model.bin``, a folder holding one, or a
Hugging Face hub repo id written ``hf:pyannote/segmentation-3.0`` (optionally ``@revision``).

The ``hf:`` prefix is required: a mistyped local path such as ``models/seg`` must say "no
such file", not quietly fetch some repo of that name from the internet.

``huggingface_hub`` is an optional dependency imported only when a repo id is given; nothing
is ever downloaded at import time. Every failure becomes a :class:`ModelLoadError` whose
message says what to do next.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from streamer.errors import ModelLoadError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "pytorch_model.bin"
#: What marks a model source as a Hugging Face hub repo id.
HUB_PREFIX = "hf:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not source.startswith((".", "/", "~"))


def _offline_hint(repo_id: str) -> str:
    return (
        f"Download it on a machine with internet access (`huggingface-cli download {repo_id} "
        f"{CHECKPOINT_NAME}`, or https://huggingface.co/{repo_id}/resolve/main/{CHECKPOINT_NAME} "
        "in a browser after accepting the model's conditions), copy the file into a folder here "
        "and pass that folder path instead of the repo id."
    )


def _download(repo_id: str, revision: str | None, cache_dir: str | Path | None,
              token: str | None) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
    except ImportError as exc:
        raise ModelLoadError(
            f"loading {repo_id!r} from the Hugging Face hub needs the huggingface_hub package: "
            "`pip install huggingface_hub` (or `pip install streamer[hub]`). "
            + _offline_hint(repo_id)) from exc
    token = token or os.environ.get("HF_TOKEN") or None
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    logger.info("fetching %s/%s from the Hugging Face hub", where, CHECKPOINT_NAME)
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id, CHECKPOINT_NAME, revision=revision, cache_dir=cache_dir, token=token)
    except hub_errors.GatedRepoError as exc:
        if token:
            advice = ("the token in use has no access: accept the conditions with the account "
                      "that owns the token, or use another token")
        else:
            advice = ("create an access token at https://huggingface.co/settings/tokens and set "
                      "it in the HF_TOKEN environment variable (or pass token=...)")
        raise ModelLoadError(
            f"{repo_id} is a gated model: visit https://huggingface.co/{repo_id}, log in and "
            f"accept its user conditions; then {advice}.") from exc
    except hub_errors.RepositoryNotFoundError as exc:
        raise ModelLoadError(
            f"no model repo {repo_id!r} on the Hugging Face hub (or it is private): check the "
            "spelling; for a private repo set HF_TOKEN to a token that can read it.") from exc
    except hub_errors.RevisionNotFoundError as exc:
        raise ModelLoadError(
            f"revision {revision!r} of {repo_id} does not exist: check the branch, tag or "
            "commit, or leave the revision out.") from exc
    except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled,
            ConnectionError, TimeoutError) as exc:
        raise ModelLoadError(
            f"cannot reach the Hugging Face hub to fetch {where}/{CHECKPOINT_NAME}, and it is "
            f"not in the local cache (offline, firewalled or HF_HUB_OFFLINE=1). "
            + _offline_hint(repo_id)) from exc
    except hub_errors.EntryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo_id} has no {CHECKPOINT_NAME}: it is not a pyannote model repo (e.g. a "
            "pipeline repo such as pyannote/speaker-diarization-3.1 only points to models; "
            "pass the model repo, e.g. hf:pyannote/segmentation-3.0).") from exc
    except (hub_errors.HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(
            f"fetching {where}/{CHECKPOINT_NAME} from the Hugging Face hub failed: {exc}. "
            + _offline_hint(repo_id)) from exc
    return Path(path)


def resolve_checkpoint(source: str | os.PathLike[str], *, revision: str | None = None,
                       cache_dir: str | Path | None = None, token: str | None = None) -> Path:
    """Return the local path of the ``pytorch_model.bin`` that ``source`` designates:
    a file, a folder holding one, or ``hf:<repo id>[@revision]`` (downloaded)."""
    text = os.fspath(source)
    if not text.strip():
        raise ModelLoadError("empty model source: give a file, a folder or hf:<hub repo id>")
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):]
        if not is_repo_id(repo):
            raise ModelLoadError(
                f"{text!r} is not a Hugging Face repo id: write hf:OWNER/NAME, e.g. "
                "hf:pyannote/segmentation-3.0 (optionally @revision)")
        repo_id, _, at_revision = repo.partition("@")
        return _download(repo_id, revision or at_revision or None, cache_dir, token)
    path = Path(text).expanduser()
    try:
        is_dir = path.is_dir()
        if not is_dir:
            path.stat()
    except PermissionError:
        raise ModelLoadError(f"{path}: permission denied") from None
    except (OSError, ValueError):
        hint = (f"; to fetch it from the Hugging Face hub, write hf:{text}" if is_repo_id(text)
                else "")
        raise ModelLoadError(f"{text}: no such file or folder{hint}") from None
    if not is_dir:
        return path
    candidate = path / CHECKPOINT_NAME
    try:
        candidate.stat()
        return candidate
    except PermissionError:
        raise ModelLoadError(f"{path}: permission denied") from None
    except OSError:
        pass
    others = sorted(p.name for p in path.glob("*.bin")) + sorted(
        p.name for p in path.glob("*.ckpt"))
    hint = f" (it holds {', '.join(others[:3])}: pass that file's path)" if others else ""
    raise ModelLoadError(f"folder {path} has no {CHECKPOINT_NAME}{hint}")
