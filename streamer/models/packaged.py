"""Model weights that ship inside this package, named ``packaged:<name>`` wherever a
model source is taken (``--segmentation``, ``--embedding``, presets).

- ``packaged:segmentation-3.0``: pyannote/segmentation-3.0 (MIT), the checkpoint of the
  Hugging Face hub, read by the restricted unpickler like any pyannote checkpoint.
- ``packaged:campplus``: the CAM++ speaker encoder of 3D-Speaker (Apache 2.0).

Licences and provenance: ``streamer/models/weights/`` (``NOTICE`` files).
"""
from __future__ import annotations

import os

from streamer.errors import ModelLoadError

PREFIX = "packaged:"
_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
PACKAGED = {
    "segmentation-3.0": os.path.join(_WEIGHTS, "segmentation-3.0", "pytorch_model.bin"),
    "campplus": os.path.join(_WEIGHTS, "campplus_sv_zh_en_16k_common_advanced.npz"),
}


def is_packaged(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def packaged_path(source: str) -> str:
    """The file of a ``packaged:<name>`` source."""
    name = source[len(PREFIX):]
    if name not in PACKAGED:
        raise ModelLoadError(f"no packaged model {name!r}: choose one of "
                             f"{', '.join(PREFIX + n for n in PACKAGED)}")
    path = PACKAGED[name]
    if not os.path.exists(path):
        raise ModelLoadError(f"the packaged model file {path} is missing: reinstall streamer")
    return path
