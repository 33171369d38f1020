"""Single-use session tokens: a backend holding the server's token asks for a short-lived
websocket URL (``POST /v1/sessions``) and hands it to a browser, which never sees the
server's token.

A token is ``ID.EXPIRY.SIGNATURE``: a random id, the expiry (Unix milliseconds) and an
HMAC-SHA256 of both under a key derived from the server's token, so every worker process
of one server (``--processes N``) accepts the tokens any of them issued. A token opens
one websocket: its id is remembered until it expires, and a second handshake with it is
refused, as are an expired token and a wrong signature. The memory of used ids is per
process: under ``--processes N`` a reuse that the kernel hands to another worker within
the token's lifetime is not caught (keep the lifetime short).
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable

from streamer.server.signing import derive_key, sign, verify

#: Default lifetime of a session token, seconds.
DEFAULT_TTL = 60.0
#: Signature bytes in a token (it travels in a URL, so it is kept short).
SIGNATURE_BYTES = 18


@dataclass(frozen=True)
class IssuedSession:
    id: str
    token: str
    expires_at: float  # Unix seconds


class SessionTokens:
    """Issues and redeems single-use tokens (thread-safe).

    Args:
        server_token: The server's token, from which the signing key is derived (``None``:
            a random key of this process).
        ttl: Seconds a token stays valid.
    """

    def __init__(self, server_token: str | None, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.time):
        self._key = derive_key(b"streamer session tokens",
                               server_token or secrets.token_hex(32))
        self.ttl = ttl
        self._clock = clock
        self._used: dict[str, float] = {}  # id -> expiry, until it expires
        self._lock = threading.Lock()

    def issue(self) -> IssuedSession:
        session = secrets.token_hex(8)
        expires_ms = int((self._clock() + self.ttl) * 1000)
        body = f"{session}.{expires_ms}"
        return IssuedSession(session, f"{body}.{sign(self._key, body, SIGNATURE_BYTES)}",
                             expires_ms / 1000)

    def valid(self, token: str) -> bool:
        """Whether ``token`` would be accepted now (it is not used up by asking)."""
        return self._check(token, redeem=False) is not None

    def redeem(self, token: str) -> str | None:
        """The session id of a valid, unexpired, unused ``token`` (now used), else None."""
        return self._check(token, redeem=True)

    def _check(self, token: str, redeem: bool) -> str | None:
        parts = token.split(".")
        if len(parts) != 3 or not parts[1].isdigit() or len(parts[1]) > 16:
            return None
        session, expires, signature = parts
        if not verify(self._key, f"{session}.{expires}", signature, SIGNATURE_BYTES):
            return None
        now = self._clock()
        expiry = int(expires) / 1000
        with self._lock:
            if redeem:
                self._used = {k: v for k, v in self._used.items() if v > now}
            if expiry <= now or session in self._used:
                return None
            if redeem:
                self._used[session] = expiry
        return session


__all__ = ["DEFAULT_TTL", "IssuedSession", "SessionTokens"]
