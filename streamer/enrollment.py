"""Enrolment: the voiceprint of one voice, made by diarizing its audio like a stream (see
:mod:`streamer.voiceprints` for the document and identification)."""
from __future__ import annotations

from typing import Any

import numpy as np

from streamer.audio import SAMPLE_RATE, prepare_samples
from streamer.engine import diarize_array
from streamer.models.base import embedding_identity
from streamer.voiceprints import (MAX_ENROLL_SECONDS, MIN_ENROLL_SPEECH, SECOND_SPEAKER_SPEECH,
                                  VoiceprintError, voiceprint_document)


def enroll(frontend: Any, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """The voiceprint of the one voice in ``samples`` (any rate, float or integer PCM,
    channels on either axis; at most ``MAX_ENROLL_SECONDS``).

    Raises:
        VoiceprintError: audio that is too long, holds less than ``MIN_ENROLL_SPEECH`` of
            speech, or where the engine finds a second speaker.
        AudioFormatError: samples that are not audio."""
    prepared = prepare_samples(samples, sample_rate)
    seconds = len(prepared) / frontend.sample_rate
    if seconds > MAX_ENROLL_SECONDS + 1e-6:
        raise VoiceprintError(f"enrolment takes at most {MAX_ENROLL_SECONDS:g} s of audio, "
                              f"got {seconds:.1f} s: cut it to one speaker's clearest part")
    _, engine = diarize_array(frontend, prepared, None, chunk=1.0)
    speakers = sorted(engine.speakers(), key=lambda s: -s.speech)
    speech = sum(s.speech for s in speakers)
    if not speakers or speech < MIN_ENROLL_SPEECH:
        raise VoiceprintError(f"not enough speech to enroll: {speech:.1f} s found, at least "
                              f"{MIN_ENROLL_SPEECH:g} s needed")
    if len(speakers) > 1 and speakers[1].speech >= SECOND_SPEAKER_SPEECH:
        raise VoiceprintError(
            f"the audio holds {sum(s.speech >= SECOND_SPEAKER_SPEECH for s in speakers)} "
            "speakers: a voiceprint takes the speech of one speaker only")
    return voiceprint_document(embedding_identity(frontend), np.asarray(speakers[0].embedding),
                               speech, speakers[0].pitch)


__all__ = ["enroll"]
