"""HMAC-SHA256 signatures in base64url, for the tokens and states a client holds but must
not forge (session URLs, speaker states)."""
from __future__ import annotations

import base64
import hashlib
import hmac


def derive_key(purpose: bytes, seed: str) -> bytes:
    """A key for one ``purpose`` from a secret ``seed`` (one secret serves several uses
    without one use's signatures being valid for another)."""
    return hmac.new(purpose, seed.encode(), hashlib.sha256).digest()


def sign(key: bytes, text: str, size: int = 32) -> str:
    """The first ``size`` bytes of HMAC-SHA256(``key``, ``text``), base64url, unpadded."""
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()[:size]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def verify(key: bytes, text: str, signature: str, size: int = 32) -> bool:
    """Whether ``signature`` is :func:`sign` of ``text`` (in constant time)."""
    return hmac.compare_digest(signature.encode(), sign(key, text, size).encode())


__all__ = ["derive_key", "sign", "verify"]
