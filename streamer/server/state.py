"""Integrity-protected speaker states for session resume.

The ``end`` event (and the answer to a ``snapshot`` message) carries the stream's speaker
memory (:meth:`streamer.engine.StreamingDiarizer.state`) as ``PAYLOAD.SIGNATURE``: the
state's JSON in base64url, and an HMAC-SHA256 of it under the server's secret, so a
client can hold it and give it back in ``start.resume`` but cannot forge or alter it.
The secret is ``STREAMER_STATE_SECRET`` (``ServerSettings.state_secret``), else derived
from the server token, else random for the process (states then resume only on that process
until it restarts). A client can read the state (it holds centroids and the front end's
recurrent state, not audio).
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

import numpy as np

from streamer.errors import ProtocolError
from streamer.server.signing import derive_key, sign, verify

#: Largest sealed state accepted in ``start.resume`` (characters).
MAX_STATE_CHARS = 1 << 20


class BadState(ProtocolError):
    """A ``start.resume`` state that is forged, damaged, foreign or unusable."""

    code = "bad_state"


class StateSealer:
    """Seals and opens speaker states with one secret."""

    def __init__(self, secret: str | None, token: str | None = None):
        #: Whether states survive a restart and are shared between processes.
        self.durable = bool(secret or token)
        self._key = derive_key(b"streamer speaker states",
                               secret or (f"token:{token}" if token else secrets.token_hex(32)))

    def seal(self, state: dict[str, Any]) -> str:
        payload = base64.urlsafe_b64encode(
            json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
        return f"{payload}.{sign(self._key, payload)}"

    def open(self, sealed: Any) -> dict[str, Any]:
        """The state inside ``sealed``; raises :class:`BadState` when it was not sealed
        by this secret, was altered, or is not a state."""
        if not isinstance(sealed, str) or len(sealed) > MAX_STATE_CHARS or sealed.count(".") != 1:
            raise BadState("resume must be the state string of an earlier end or snapshot")
        payload, signature = sealed.split(".")
        if not verify(self._key, payload, signature):
            raise BadState("the resume state was not issued by this server or was altered")
        try:
            state = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError):
            raise BadState("the resume state is damaged") from None
        if not isinstance(state, dict):
            raise BadState("the resume state is damaged")
        return state


def encode_context(samples: np.ndarray, rate: int) -> dict[str, Any]:
    """A stream's audio context (:meth:`StreamingDiarizer.context`) for the store: 16-bit
    PCM, base64."""
    pcm = (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2")
    return {"rate": rate, "pcm_s16le": base64.b64encode(pcm.tobytes()).decode()}


def decode_context(document: Any, rate: int, max_samples: int) -> np.ndarray | None:
    """The samples of an :func:`encode_context` document, or None when it does not fit
    this stream (another rate, too long, damaged): the stream then resumes without."""
    if not isinstance(document, dict) or document.get("rate") != rate:
        return None
    data = document.get("pcm_s16le")
    if not isinstance(data, str) or len(data) > (max_samples * 2 + 2) * 4 // 3 + 4:
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) % 2 or len(raw) // 2 > max_samples:
        return None
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768


__all__ = ["BadState", "MAX_STATE_CHARS", "StateSealer", "decode_context", "encode_context"]
