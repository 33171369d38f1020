"""Speaker embedding networks behind the engine's :class:`~streamer.models.base.EmbeddingModel`
interface."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import numpy as np
import torch

from streamer.models.pyannote.device import Runner, cudnn_autotuned, cudnn_tf32
from streamer.models.pyannote.pooling import resize_weights
from streamer.models.pyannote.waveforms import (as_waveforms, as_weights, distinct_rows,
                                               shortest_input)

#: See :attr:`PyannoteEmbedding.crop_threshold`.
CROP_THRESHOLD = 1e-7


class PyannoteEmbedding:
    """Speaker embedding network behind the :class:`EmbeddingModel` interface.

    The expensive trunk runs once per *distinct* chunk in the batch: calling it with the
    same chunk repeated once per local speaker (each with its own weights) costs one trunk
    pass plus cheap pooling per speaker.
    """

    def __init__(self, architecture: str, module: torch.nn.Module, sample_rate: int,
                 dimension: int, runner: Runner, *, device: torch.device, backend: str,
                 source: str, max_batch: int = 32,
                 frames_runner: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.architecture = architecture
        self.sample_rate = sample_rate
        self.dimension = dimension
        self.device, self.backend, self.source = device, backend, source
        #: Let cuDNN use TF32 on GPUs (faster ResNet; outputs drift from the CPU's).
        self.allow_tf32 = False
        #: ``"bf16"`` runs the trunk under bfloat16 autocast (torch backend): faster on
        #: CPUs with AMX and on GPUs, embeddings close to fp32's (figures: the README).
        self.precision = "fp32"
        #: Largest number of distinct chunks per trunk pass.
        self.max_batch = max_batch
        #: Pad fp32 GPU passes to fixed shapes (see :attr:`fixed_shapes`).
        self.fixed_gpu_shapes = True
        #: On CPU, the WeSpeaker ResNet runs only over the part of a chunk where some
        #: speaker's weight is above this share of its largest (plus the network's
        #: receptive field): the frames it leaves out would add less than ~1e-5 to the
        #: weighted statistics. ``None`` turns it off.
        self.crop_threshold: float | None = (
            CROP_THRESHOLD if device.type == "cpu" and hasattr(module, "trunk_span")
            and (backend == "torch" or frames_runner is not None) else None)
        self._frames = frames_runner
        self._module = module
        self._head_device = device if backend == "torch" else torch.device("cpu")
        self.num_frames: Callable[[int], int] = module.num_frames
        self.min_samples = shortest_input(module.num_frames, 2)
        self._run = runner

    @contextlib.contextmanager
    def _numerics(self) -> Iterator[None]:
        """The TF32 and bf16 settings of a trunk call."""
        bf16 = self.precision == "bf16"
        with cudnn_tf32(self.device, self.allow_tf32), \
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            yield

    def warm_up(self, samples: int) -> None:
        """Run the trunk on chunks of ``samples`` samples in every shape it will take, so
        that no stream waits for the one-time work of a first call: a compiled trunk
        builds its graphs (a static one for one row, then one for any number), and with
        :attr:`fixed_shapes` cuDNN tunes each power of two up to ``max_batch`` once."""
        rows = [1, 2]
        if self.fixed_shapes:
            rows = [1 << k for k in range((max(self.max_batch, 1) - 1).bit_length() + 1)]
        rng = np.random.default_rng(0)
        for count in rows:
            chunks = 0.1 * rng.standard_normal((count, max(samples, self.min_samples)))
            with torch.inference_mode():
                self._trunk(chunks.astype(np.float32))

    @property
    def fixed_shapes(self) -> bool:
        """Whether trunk passes are padded to a power-of-two number of rows and run with
        cuDNN's autotuner: fp32 on a GPU. There, cuDNN's fp32 convolutions take a large
        workspace chosen per input shape, so batches of every size from 1 to ``max_batch``
        fill the GPU's memory with workspaces and run several times slower than a few
        fixed shapes tuned once (the README has the figures). bf16 needs no such help and
        would only pay for the padding."""
        return (self.fixed_gpu_shapes and self.device.type == "cuda"
                and self.precision == "fp32" and self.backend == "torch")

    def _trunk(self, batch: np.ndarray) -> torch.Tensor:
        with self._numerics(), cudnn_autotuned(self.fixed_shapes):
            parts = [self._pass(batch[i:i + self.max_batch])
                     for i in range(0, batch.shape[0], self.max_batch)]
        return torch.cat(parts).to(self._head_device)

    def _pass(self, rows: np.ndarray) -> torch.Tensor:
        count = rows.shape[0]
        if not self.fixed_shapes or count & (count - 1) == 0:
            return self._run(rows).float()
        padded = np.zeros((1 << count.bit_length(), rows.shape[1]), rows.dtype)
        padded[:count] = rows
        return self._run(padded)[:count].float()

    def __call__(self, waveforms: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        batch = as_waveforms(waveforms, self.min_samples)
        size = batch.shape[0]
        weight_tensor = None
        if weights is not None:
            weight_tensor = torch.from_numpy(as_weights(weights, size)).to(self._head_device)
        if not size:
            return np.zeros((0, self.dimension), dtype=np.float32)
        unique, inverse = distinct_rows(batch)
        with torch.inference_mode():
            if weight_tensor is not None and self.crop_threshold is not None:
                cropped = self._cropped(unique, inverse, weight_tensor)
                if cropped is not None:
                    return cropped
            frames = self._trunk(unique)
            if len(unique) != size:
                frames = frames[torch.tensor(inverse, device=frames.device)]
            embeddings = self._module.head(frames, weight_tensor)
        return embeddings.float().cpu().numpy()

    def _cropped(self, unique: np.ndarray, inverse: list[int],
                 weights: torch.Tensor) -> np.ndarray | None:
        """Embeddings with the ResNet cropped to where the weights matter, or None when no
        chunk of the batch is worth cropping."""
        frames = self.num_frames(unique.shape[1])
        full = resize_weights(weights, frames)
        keep = full > self.crop_threshold * full.amax(dim=1, keepdim=True)
        members = [[row for row, u in enumerate(inverse) if u == index]
                   for index in range(len(unique))]
        spans = []
        for rows in members:
            used = torch.nonzero(keep[rows].any(dim=0)).flatten()
            start, stop = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, frames)
            spans.append((start, stop))
        # output frames the margins add, both sides together
        context = 2 * self._module.crop_margin // self._module.resnet.time_stride
        if all(stop - start + context >= 0.8 * frames for start, stop in spans):
            return None
        out = torch.empty(len(inverse), self.dimension)
        for chunk, rows, (start, stop) in zip(unique, members, spans):
            with self._numerics():
                trunk = self._module.trunk_span(torch.from_numpy(chunk)[None], start, stop,
                                                frames=self._frames)
            trunk = trunk.float().expand(len(rows), -1, -1)
            out[rows] = self._module.head(trunk, full[rows, start:stop]).float()
        return out.numpy()

    def describe(self) -> dict[str, Any]:
        return {"kind": "embedding", "architecture": self.architecture, "source": self.source,
                "backend": self.backend, "device": str(self.device),
                "dimension": self.dimension, "precision": self.precision}
