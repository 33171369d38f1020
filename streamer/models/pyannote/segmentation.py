"""PyanNet segmentation behind the engine's :class:`~streamer.models.base.SegmentationModel`
interface, and the per-stream cache of its filterbank responses."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from streamer.models.base import FrameTiming
from streamer.models.pyannote.device import Runner, cudnn_tf32
from streamer.models.pyannote.powerset import powerset_mapping, to_multilabel
from streamer.models.pyannote.pyannet import PyanNet, SegmentationSpec
from streamer.models.pyannote.waveforms import as_waveforms, shortest_input


class PyannoteSegmentation:
    """PyanNet segmentation behind the :class:`SegmentationModel` interface.

    ``__call__`` returns per-speaker activations in [0, 1]: sigmoid outputs of multilabel
    models, or for powerset models the probability that each speaker is active (powerset
    class probabilities summed per speaker). :meth:`activations` with ``hard=True`` gives
    the speakers of the most likely powerset class instead; :meth:`raw` the network output.
    """

    def __init__(self, model: PyanNet, spec: SegmentationSpec, sample_rate: int,
                 runner: Runner, *, device: torch.device, backend: str, source: str,
                 responses_runner: Callable[..., torch.Tensor] | None = None,
                 ) -> None:
        self.sample_rate = sample_rate
        self.chunk_duration = spec.duration
        self.classes = spec.classes
        self.num_speakers = len(spec.classes)
        self.powerset = spec.powerset
        self.max_simultaneous = spec.powerset_max_classes or self.num_speakers
        self.device, self.backend, self.source = device, backend, source
        #: Let cuDNN use TF32 on GPUs (faster, outputs drift ~1e-3 from the CPU's).
        self.allow_tf32 = False
        self._num_frames = model.sincnet.num_frames
        chunk_frames = self._num_frames(round(spec.duration * sample_rate))
        step = spec.duration / chunk_frames
        self.frames = FrameTiming(start=0.0, duration=step, step=step)
        size, hop = model.sincnet.receptive_field()
        #: Span and hop of the audio that one output frame actually sees.
        self.receptive_field = FrameTiming(start=0.0, duration=size / sample_rate,
                                           step=hop / sample_rate)
        #: The network's instance norms need at least two output frames.
        self.min_samples = shortest_input(self._num_frames, 2)
        self._mapping = (powerset_mapping(self.num_speakers, spec.powerset_max_classes)
                         if spec.powerset_max_classes is not None else None)
        self._run = runner
        self._run_responses = responses_runner
        self._sincnet = model.sincnet
        #: The torch network (the ONNX backend runs an export of it).
        self.network = model

    @property
    def mapping(self) -> np.ndarray | None:
        """``(powerset_classes, speakers)`` 0/1 matrix, or None for multilabel models."""
        return None if self._mapping is None else self._mapping.numpy().copy()

    def num_frames(self, num_samples: int) -> int:
        return self._num_frames(num_samples)

    def _raw_tensor(self, waveforms: Any) -> torch.Tensor:
        batch = as_waveforms(waveforms, self.min_samples)
        if not batch.shape[0]:
            width = self._mapping.shape[0] if self._mapping is not None else self.num_speakers
            return torch.zeros(0, self.num_frames(batch.shape[1]), width)
        with cudnn_tf32(self.device, self.allow_tf32):
            return self._run(batch).float()

    def raw(self, waveforms: Any) -> np.ndarray:
        """Network output: powerset log-probabilities or multilabel sigmoid activations."""
        return self._raw_tensor(waveforms).cpu().numpy()

    def to_multilabel(self, raw: np.ndarray | torch.Tensor, *, hard: bool = False) -> np.ndarray:
        """Convert :meth:`raw` output to ``(batch, frames, speakers)`` activations."""
        scores = torch.as_tensor(raw, dtype=torch.float32)
        if self._mapping is None:
            return ((scores > 0.5).float() if hard else scores).cpu().numpy()
        mapping = self._mapping.to(scores.device)
        return to_multilabel(scores, mapping, soft=not hard).cpu().numpy()

    def activations(self, waveforms: Any, *, hard: bool = False) -> np.ndarray:
        with torch.inference_mode():
            return self.to_multilabel(self._raw_tensor(waveforms), hard=hard)

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        return self.activations(waveforms)

    # -- streaming: reuse the first layer's work of the previous step --------------------

    @property
    def reuses_filter_responses(self) -> bool:
        """Whether :meth:`response_cache` / :meth:`from_responses` are available (CPU)."""
        return self._run_responses is not None

    def response_cache(self) -> "FilterbankCache":
        """A per-stream cache of the first layer's work (see :meth:`from_responses`)."""
        if self._run_responses is None:
            raise RuntimeError("filter-response reuse runs on the CPU backends only")
        return FilterbankCache(self._sincnet, self.min_samples)

    def from_responses(self, maxima: np.ndarray, minima: np.ndarray, statistics: np.ndarray,
                       *, raw: bool = False) -> np.ndarray:
        """Same as ``self(chunks)`` (or :meth:`raw` with ``raw=True``) from
        :class:`FilterbankCache` outputs stacked on a batch axis: ``maxima`` and ``minima``
        ``(batch, windows, filters)``, ``statistics (batch, 2)``."""
        if self._run_responses is None:
            raise RuntimeError("filter-response reuse runs on the CPU backends only")
        maxima = np.ascontiguousarray(maxima, dtype=np.float32)
        minima = np.ascontiguousarray(minima, dtype=np.float32)
        statistics = np.ascontiguousarray(statistics, dtype=np.float32)
        if (maxima.ndim != 3 or minima.shape != maxima.shape
                or statistics.shape != (maxima.shape[0], 2)):
            raise ValueError(f"maxima and minima must be (batch, windows, filters) and "
                             f"statistics (batch, 2), got {maxima.shape}, {minima.shape} "
                             f"and {statistics.shape}")
        with torch.inference_mode():
            if not maxima.shape[0]:
                scores = self._raw_tensor(np.zeros((0, self.min_samples), np.float32))
            else:
                scores = self._run_responses(maxima, minima, statistics).float()
            return scores.cpu().numpy() if raw else self.to_multilabel(scores)

    def describe(self) -> dict[str, Any]:
        return {"kind": "segmentation", "architecture": "PyanNet", "source": self.source,
                "backend": self.backend, "device": str(self.device),
                "chunk_duration": self.chunk_duration, "num_speakers": self.num_speakers,
                "powerset": self.powerset, "frame_step": self.frames.step,
                "reuses_filterbank": self.reuses_filter_responses}


class _WindowSeries:
    """Max and min of consecutive pooling windows of one phase: rows are windows whose
    first frames are ``first, first + pool, ...`` (absolute frame indices)."""

    def __init__(self, capacity: int, filters: int) -> None:
        self.maxima = torch.empty(capacity, filters)
        self.minima = torch.empty(capacity, filters)
        self.first = 0
        self.count = 0

    def next_start(self, pool: int) -> int | None:
        return self.first + pool * self.count if self.count else None

    def append(self, maxima: torch.Tensor, minima: torch.Tensor, start: int, pool: int,
               keep_from: int) -> None:
        if not self.count:
            self.first = start
        new = maxima.shape[0]
        if self.count + new > self.maxima.shape[0]:  # drop windows before ``keep_from``
            drop = min(self.count, max(0, -(-(keep_from - self.first) // pool)))
            keep = self.count - drop
            self.maxima[:keep] = self.maxima[drop:self.count].clone()
            self.minima[:keep] = self.minima[drop:self.count].clone()
            self.first += pool * drop
            self.count = keep
            if self.count + new > self.maxima.shape[0]:
                raise RuntimeError("window store too small for this chunk")  # not reached
        self.maxima[self.count:self.count + new] = maxima
        self.minima[self.count:self.count + new] = minima
        self.count += new

    def windows(self, start: int, count: int, pool: int) -> tuple[torch.Tensor, torch.Tensor]:
        row, misaligned = divmod(start - self.first, pool)
        if misaligned or row < 0 or row + count > self.count:
            raise RuntimeError(f"windows from frame {start} are not in the store")  # a bug
        return self.maxima[row:row + count], self.minima[row:row + count]


class FilterbankCache:
    """One stream's first-layer work of the segmentation network, kept across steps.

    The network's first layer normalises the chunk, convolves it with the sinc filters (80
    filters x 251 taps at a 10-sample stride: its costliest layer), takes absolute values
    and max-pools them by 3. Normalising and filtering are linear, so the filters can run on
    the raw audio with the normalisation applied afterwards; and as ``|a x + b|`` is convex
    in ``x``, the largest of a window is reached at the window's largest or smallest raw
    response. This cache keeps, for the three window phases, the maxima and minima of the
    windows of the raw responses (:meth:`SincNet.forward_pooled` finishes the layer). When
    the next chunk is the previous one moved by a multiple of the stride, as in a rolling
    stream buffer, only the new samples are filtered and pooled; any other chunk is
    computed in full. Reuse is decided by comparing the audio itself, so a wrong position
    hint only costs time.
    """

    def __init__(self, sincnet: Any, min_samples: int) -> None:
        self._sincnet = sincnet
        self.min_samples = max(int(min_samples), int(sincnet.kernel_size))
        self._stride = int(sincnet.stride)
        self._kernel = int(sincnet.kernel_size)
        self._pool = int(sincnet.first_pool)
        self._chunk: np.ndarray | None = None
        self._position = 0
        self._frame0 = 0  # absolute index (in frames since the last full computation)
        self._tail = torch.empty(0)  # raw responses of the last frames (< one window)
        self._end = 0  # absolute index after the last filtered frame
        self._series: list[_WindowSeries] = []
        #: Frames filtered and frames reused so far (for tests and benchmarks).
        self.computed_frames = 0
        self.reused_frames = 0

    def update(self, chunk: np.ndarray, position: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(maxima, minima)`` of the raw responses over the chunk's pooling windows, each
        ``(windows, filters)``, and the chunk's normalisation statistics ``(2,)``: the
        inputs of :meth:`PyannoteSegmentation.from_responses` (stack them on a batch axis).
        ``chunk``: 1-D float32 audio; ``position``: index of its first sample in the stream.
        The arrays are valid until the next update."""
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.ndim != 1 or chunk.size < self.min_samples:
            raise ValueError(f"chunk must be 1-D with at least {self.min_samples} samples, "
                             f"got shape {chunk.shape}")
        if not np.isfinite(chunk).all():
            raise ValueError("chunk contains NaN or infinite values")
        frames = (chunk.size - self._kernel) // self._stride + 1
        shift = self._shift(chunk, position, frames)
        with torch.inference_mode():
            audio = torch.from_numpy(chunk)
            if shift is None:
                self._restart(frames)
                self._extend(self._sincnet.filter_responses(audio[None])[0])
                self.computed_frames += frames
            else:
                new = shift // self._stride
                self._frame0 += new
                start = self._stride * (frames - new)
                self._extend(self._sincnet.filter_responses(audio[None, start:])[0])
                self.computed_frames += new
                self.reused_frames += frames - new
            windows = frames // self._pool
            series = self._series[self._frame0 % self._pool]
            maxima, minima = series.windows(self._frame0, windows, self._pool)
            statistics = self._sincnet.norm_statistics(audio[None])[0]
        self._chunk, self._position = chunk, (position if position is not None else 0)
        return maxima.numpy(), minima.numpy(), statistics.numpy()

    def _shift(self, chunk: np.ndarray, position: int | None, frames: int) -> int | None:
        """Samples the audio moved by since the previous chunk, when its work is reusable."""
        previous = self._chunk
        if previous is None or position is None or previous.size != chunk.size:
            return None
        shift = position - self._position
        if shift <= 0 or shift % self._stride or shift // self._stride > frames // 4:
            return None
        if not np.array_equal(chunk[:chunk.size - shift], previous[shift:]):
            return None
        return shift

    def _restart(self, frames: int) -> None:
        windows = frames // self._pool
        capacity = windows + windows // 4 + 2
        filters = self._sincnet.num_filters
        if not self._series or self._series[0].maxima.shape != (capacity, filters):
            self._series = [_WindowSeries(capacity, filters) for _ in range(self._pool)]
        for series in self._series:
            series.count = 0
        self._frame0 = self._end = 0
        self._tail = torch.empty(0, filters)

    def _extend(self, responses: torch.Tensor) -> None:
        """Add the raw responses of the frames after ``self._end`` and pool every phase."""
        segment = torch.cat([self._tail, responses]) if self._tail.shape[0] else responses
        first = self._end - self._tail.shape[0]
        self._end += responses.shape[0]
        pool = self._pool
        for phase, series in enumerate(self._series):
            start = series.next_start(pool)
            if start is None:  # the first window of this phase in the segment
                start = first + (phase - first) % pool
            count = (self._end - start) // pool
            if count <= 0:
                continue
            offset = start - first
            windows = segment[offset:offset + pool * count].reshape(count, pool, -1)
            series.append(windows.amax(dim=1), windows.amin(dim=1), start, pool,
                          keep_from=self._frame0)
        self._tail = segment[-(pool - 1):].clone() if pool > 1 else segment[:0]
