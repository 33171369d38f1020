"""The Python API: a pipeline object in the manner of pyannote's, over the streaming engine.

>>> from streamer import Pipeline
>>> pipeline = Pipeline("embedded")                  # or Pipeline(segmentation=..., ...)
>>> result = pipeline("meeting.wav", num_speakers=3)
>>> for segment, speaker in result:
...     print(f"{segment.start:.1f} {segment.end:.1f} {speaker}")

A pipeline loads its models once and diarizes any number of inputs, one after the other
or from several threads (each call runs its own engine). Every call streams the audio
through :class:`streamer.engine.StreamingDiarizer` as the server does; as the whole
audio is at hand, it is streamed twice by default, the second time from the speakers the
first pass found (``passes=1`` gives exactly the turns of one stream of it, with
``latency=2.0`` those of a live one).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from streamer.audio import SAMPLE_RATE, AudioFile, prepare_samples
from streamer.config import FILE_PASSES, StreamConfig
from streamer.engine import StreamingDiarizer, run_passes
from streamer.errors import AudioFormatError, ConfigError
from streamer.filemode import rechunk
from streamer.models.base import Frontend
from streamer.results import Annotation, Diarization, Segment, uri_of
from streamer.enrollment import enroll
from streamer.voiceprints import read_voiceprints

#: Seconds of audio fed to the engine per call (as file mode does).
CHUNK = 5.0
#: ``hook(step, artifact, *, file=None, total=None, completed=None)``, as pyannote's.
Hook = Callable[..., Any]


class Pipeline:
    """Speaker diarization with the models of a preset, loaded once.

    Args:
        preset: ``"embedded"`` (default: Silero VAD + GE2E, weights packaged),
            ``"accurate"`` (segmentation-3.0 + CAM++, weights packaged) or
            ``"pyannote"``; ``segmentation``/``embedding`` imply ``"pyannote"``.
        segmentation, embedding: pyannote model sources: a ``pytorch_model.bin``, a
            folder holding one, ``packaged:<name>``, or ``hf:<repo id>`` (hub download;
            ``revision``, ``cache_dir`` and ``token`` go in ``hub``).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``. backend: ``"torch"`` or ``"onnx"``.
        precision: ``"fp32"`` or ``"bf16"`` (pyannote embedding model, torch backend).
        frontend: an already loaded front end (then the other model arguments are unused).
        config: default :class:`StreamConfig` (or its fields as a dict) of every call.

    Raises:
        ConfigError: an unknown preset, device, backend or precision, or a bad config.
        ModelLoadError: weights that cannot be loaded.
    """

    def __init__(self, preset: str | None = None, *, segmentation: str | None = None,
                 embedding: str | None = None, device: str = "cpu", backend: str = "auto",
                 precision: str = "fp32", compile: bool = False,
                 frontend: Frontend | None = None,
                 config: StreamConfig | Mapping[str, Any] | None = None, **hub: Any):
        if frontend is None:
            from streamer.presets import load_frontend

            frontend = load_frontend(preset, segmentation, embedding, device=device,
                                     backend=backend, precision=precision, compile=compile,
                                     **hub)
        self.frontend = frontend
        self.config = _config(config)

    @property
    def detects_overlap(self) -> bool:
        """Whether the models give overlapped speech (the regular diarization)."""
        return bool(self.frontend.detects_overlap)

    def describe(self) -> dict[str, Any]:
        """The models: preset, sources, sample rate, dimensions."""
        return self.frontend.describe()

    def __call__(self, audio: Any, *, num_speakers: int | None = None,
                 min_speakers: int | None = None, max_speakers: int | None = None,
                 hook: Hook | None = None, voiceprints: Any = None,
                 passes: int = FILE_PASSES, **config: Any) -> Diarization:
        """Diarize ``audio``: a file path, or ``{"waveform": array, "sample_rate": int}``
        (numpy array or torch tensor; float in [-1, 1] or int8/int16/int32/uint8 PCM;
        ``(time,)`` or ``(channels, time)``; any rate, resampled to 16 kHz), optionally
        with ``"uri"``. ``{"audio": path}`` is a path too.

        ``num_speakers`` fixes the number of speakers; ``min_speakers`` and
        ``max_speakers`` bound it. ``passes``: how many times the audio is streamed (see
        :func:`streamer.engine.run_passes`): by default twice, the second time knowing the
        speakers the first found from the start; 1 gives the turns of one stream. Being a
        stream, the engine cannot name a speaker before that speaker has spoken enough to
        be embedded (see the README). Other keyword arguments override
        :class:`StreamConfig` fields for this call (e.g. ``latency=2.0`` for the turns a
        live stream gives: by default a whole file's frames are decided after the whole
        buffer, see the README). ``hook`` is called as audio is processed:
        ``hook("diarization", None, file=..., total=seconds, completed=seconds)``
        (see :class:`ProgressHook`).

        The result holds the exclusive diarization, the regular (overlap-aware) one when
        the models detect overlapped speech, and one embedding per speaker.
        """
        settings = dict(config)
        if voiceprints is not None:
            settings["known_speakers"] = (read_voiceprints(os.fspath(voiceprints))
                                          if isinstance(voiceprints, (str, os.PathLike))
                                          else voiceprints)
        for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                            ("max_speakers", max_speakers)):
            if value is not None:
                settings[name] = value
        if settings.get("num_speakers") is None and (
                "min_speakers" in settings or "max_speakers" in settings):
            settings["num_speakers"] = None  # explicit bounds replace a default count
        if self.detects_overlap and "outputs" not in settings:
            settings["outputs"] = ["overlap", "regular"]
        stream_config = _config({**self.config.to_dict(), **settings})
        source = AudioSource(audio)
        progress = _progress_calls(hook, source)
        turns, regions, engine = run_passes(self.frontend, source.chunks, stream_config,
                                            progress, passes)
        return Diarization(turns, regions, engine, source.uri, source.name)

    def enroll(self, audio: Any) -> dict[str, Any]:
        """The voiceprint of the one voice in ``audio`` (at most 30 s, at least 3 s of
        speech, no second voice; :class:`streamer.voiceprints.VoiceprintError`
        otherwise), for ``voiceprints=[{"name": ..., "voiceprint": ...}]``."""
        return enroll(self.frontend, AudioSource(audio).samples())

    # ------------------------------------------------------------- model-card tasks
    def vad(self, audio: Any, *, tuned_on: str | None = None, step: float | None = None,
            **binarization: float) -> list[Segment]:
        """Speech regions of ``audio`` (voice activity detection). pyannote presets: the
        segmentation model slid over the file, thresholded with the
        pyannote/segmentation card's values ``tuned_on`` ``"ami"``, ``"dihard3"`` or
        ``"voxconverse"`` (or the model's default); embedded preset: Silero VAD. Explicit
        ``onset``, ``offset``, ``min_duration_on``, ``min_duration_off`` override."""
        return self._detect("vad", audio, tuned_on, step, binarization)

    def osd(self, audio: Any, *, tuned_on: str | None = None, step: float | None = None,
            **binarization: float) -> list[Segment]:
        """Overlapped speech regions of ``audio`` (pyannote presets; see :meth:`vad` for
        the thresholds). The embedded preset raises :class:`ConfigError`."""
        return self._detect("osd", audio, tuned_on, step, binarization)

    def _detect(self, task: str, audio: Any, tuned_on: str | None, step: float | None,
                binarization: dict[str, float]) -> list[Segment]:
        from streamer.tasks import detection

        detect = detection.detect_speech if task == "vad" else detection.detect_overlap
        settings = detection.binarization_for(task, self.frontend, tuned_on, **binarization)
        regions = detect(self.frontend, AudioSource(audio).samples(), settings, step=step)
        return [Segment(start, end) for start, end in regions]

    def scores(self, audio: Any, *, raw: bool = False, step: float | None = None) -> Any:
        """The segmentation model's frame scores over the whole of ``audio``, aggregated
        over sliding chunks: a :class:`streamer.tasks.detection.Scores` (``data`` of
        ``(frames, classes)``, ``timing``, ``labels``). ``raw``: the network output
        (powerset log-probabilities). Embedded preset: Silero's speech probabilities."""
        from streamer.tasks import detection

        return detection.file_scores(self.frontend, AudioSource(audio).samples(), raw=raw,
                                     step=step)

    def resegment(self, audio: Any, baseline: Any, *, tuned_on: str | None = None,
                  step: float | None = None, **binarization: float) -> Annotation:
        """``baseline`` (a :class:`Diarization`, an :class:`Annotation` or ``[(start,
        end, speaker)]``) with its boundaries redrawn by the segmentation model, labels
        kept (pyannote presets; the card's resegmentation values, see :meth:`vad`)."""
        from streamer.tasks import detection

        if isinstance(baseline, Diarization):
            baseline = baseline.exclusive_speaker_diarization
        if isinstance(baseline, Annotation):
            baseline = [(s.start, s.end, speaker) for s, speaker in baseline]
        settings = detection.binarization_for("resegmentation", self.frontend, tuned_on,
                                              **binarization)
        segments = detection.resegment(self.frontend, AudioSource(audio).samples(),
                                       baseline, settings, step=step)
        return Annotation([(Segment(start, end), speaker) for start, end, speaker in segments])

    def embed(self, audio: Any, *, start: float | None = None,
              end: float | None = None) -> np.ndarray:
        """One unit-norm speaker embedding of ``audio``, or of its excerpt ``[start,
        end)`` seconds (see :func:`streamer.tasks.embedding.embed`)."""
        from streamer.tasks import embedding

        return embedding.embed(self.frontend, AudioSource(audio).samples(), start=start,
                               end=end)

    def embed_sliding(self, audio: Any, *, window: float, step: float | None = None,
                      start: float | None = None, end: float | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of sliding windows: ``(segments (n, 2) seconds, embeddings (n,
        dim))``; ``step`` defaults to a tenth of ``window``; windows the model cannot
        embed are rows of NaN (see :func:`streamer.tasks.embedding.embed_sliding`)."""
        from streamer.tasks import embedding

        return embedding.embed_sliding(self.frontend, AudioSource(audio).samples(),
                                       window=window, step=window / 10 if step is None
                                       else step, start=start, end=end)

    def stream(self, config: StreamConfig | Mapping[str, Any] | None = None,
               **fields: Any) -> StreamingDiarizer:
        """A new streaming engine on these models (``feed``/``flush``), for live audio."""
        base = self.config.to_dict() if config is None else _config(config).to_dict()
        return StreamingDiarizer(self.frontend, _config({**base, **fields}))


class AudioSource:
    """One input of the API, validated at once: a path or an in-memory waveform."""

    def __init__(self, audio: Any):
        self.name: str | None = None
        self._path: str | None = None
        self._samples: np.ndarray | None = None
        if isinstance(audio, (str, os.PathLike)):
            audio = {"audio": audio}
        if not isinstance(audio, Mapping):
            raise AudioFormatError(
                f"audio must be a file path or a dict with 'waveform' and 'sample_rate' "
                f"(or 'audio': path), got {type(audio).__name__}")
        unknown = sorted(set(audio) - {"audio", "waveform", "sample_rate", "uri"})
        if unknown:
            raise AudioFormatError(f"unknown key(s) in the audio dict: {', '.join(unknown)}")
        if "waveform" in audio:
            if "audio" in audio:
                raise AudioFormatError("give either 'audio' (a path) or 'waveform', not both")
            if "sample_rate" not in audio:
                raise AudioFormatError("a 'waveform' needs its 'sample_rate' (Hz)")
            self._samples = prepare_samples(_to_numpy(audio["waveform"]),
                                            audio["sample_rate"], "waveform")
            self.uri = str(audio.get("uri", "audio"))
            self.total: int | None = len(self._samples)
        elif "audio" in audio:
            self._path = os.fspath(audio["audio"])
            with AudioFile(self._path) as file:  # a bad file fails here, at once
                self.total = file.expected_samples
            self.uri = str(audio.get("uri", uri_of(self._path)))
            self.name = os.path.basename(self._path)
        else:
            raise AudioFormatError("the audio dict needs 'waveform' and 'sample_rate', "
                                   "or 'audio' (a path)")

    def chunks(self, seconds: float = CHUNK) -> Iterator[np.ndarray]:
        """16 kHz mono float32 chunks of ``seconds`` (a file is decoded as it goes)."""
        size = int(seconds * SAMPLE_RATE)
        if self._samples is not None:
            yield from (self._samples[i: i + size] for i in range(0, len(self._samples), size))
            return
        with AudioFile(self._path) as file:  # type: ignore[arg-type]
            yield from rechunk(file.blocks(), size)

    def samples(self) -> np.ndarray:
        """The whole signal, 16 kHz mono float32."""
        if self._samples is not None:
            return self._samples
        return np.concatenate([np.zeros(0, np.float32), *self.chunks()])


class ProgressHook:
    """A progress bar for :class:`Pipeline` calls, like pyannote's ``ProgressHook``::

        with ProgressHook() as hook:
            result = pipeline("meeting.wav", hook=hook)
    """

    def __init__(self, leave: bool = False):
        self.leave = leave
        self._bar: Any = None

    def __enter__(self) -> "ProgressHook":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, step: str, artifact: Any = None, *, file: Any = None,
                 total: float | None = None, completed: float | None = None) -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.desc != step:
            self.close()
            self._bar = tqdm(total=total, desc=step, unit="s", leave=self.leave,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                        "{n:.1f}/{total:.1f} s [{elapsed}<{remaining}]"
                             if total else "{desc} {n:.1f} s [{elapsed}]")
        if completed is not None:
            self._bar.n = completed
            self._bar.refresh()


def _progress_calls(hook: Hook | None, source: AudioSource) -> Callable[[int], None] | None:
    if hook is None:
        return None
    total = None if source.total is None else round(source.total / SAMPLE_RATE, 3)

    def update(done: int) -> None:
        hook("diarization", None, file=source.uri, total=total,
             completed=round(done / SAMPLE_RATE, 3))

    return update


def _to_numpy(waveform: Any) -> Any:
    """A torch tensor (on any device) as a numpy array; anything else unchanged."""
    if hasattr(waveform, "detach") and hasattr(waveform, "cpu"):
        waveform = waveform.detach().cpu()
        if str(getattr(waveform, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            waveform = waveform.float()
        return waveform.numpy()
    return waveform


def _config(config: StreamConfig | Mapping[str, Any] | None) -> StreamConfig:
    if config is None:
        return StreamConfig()
    if isinstance(config, StreamConfig):
        return config
    if isinstance(config, Mapping):
        return StreamConfig.from_dict(config)
    raise ConfigError(f"config must be a StreamConfig or a dict, got {type(config).__name__}")


__all__ = ["AudioSource", "Pipeline", "ProgressHook"]
