"""``/v1/voiceprints``: enrolment over HTTP and the server's voiceprint registry.

* ``POST /v1/voiceprints`` with audio in the body (any format the server decodes: wav,
  flac, ogg, and the others of libsndfile; more with ffmpeg), at most 30 s of one voice:
  ``201 {"voiceprint": {...}}``, the same document as ``streamer enroll``. With
  ``?name=NAME`` the voiceprint is also registered under that name (in the store, with
  ``voiceprint_ttl``), so that ``start.config.known_speakers`` may name it:
  ``[{"name": "alice"}]``.
* ``GET /v1/voiceprints/NAME``: the registered voiceprint; ``DELETE``: forgets it.

Audio that cannot make a voiceprint (too little speech, two voices, too long, not audio)
is answered 422 with ``{"type": "error", "code", "message"}``, like a stream's errors.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

from websockets.http11 import Response

from streamer.errors import ConfigError, StreamerError
from streamer.server import protocol
from streamer.server.routes import for_method, response
from streamer.server.store import StoreUnavailable

PATH = "/v1/voiceprints"


def _json(status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> Response:
    return response(status, protocol.encode(body) + "\n", "application/json", extra)


def _error(status: int, error: StreamerError) -> Response:
    return _json(status, protocol.error_message(error))


class VoiceprintRoutes:
    """Answers ``/v1/voiceprints`` for one server.

    Args:
        enroll: ``enroll(path) -> voiceprint``: decodes the audio file at ``path`` and
            enrolls it (blocking: it runs in ``run``).
        run: Runs a blocking call off the event loop (the server's engine threads).
        store: Where named voiceprints are registered.
        ttl: Seconds a registered voiceprint is kept (0: until deleted).
        body_limit: Largest body accepted, bytes.
    """

    def __init__(self, enroll: Callable[[str], dict[str, Any]],
                 run: Callable[..., Any], store: Any, ttl: float, body_limit: int,
                 on_enrolled: Callable[[], None] = lambda: None):
        self.enroll = enroll
        self.run = run
        self.store = store
        self.ttl = ttl
        self.body_limit = body_limit
        self.on_enrolled = on_enrolled

    async def handle(self, method: str, path: str, query: str, headers: Any,
                     body_length: int | None, body: bytes) -> Response:
        name = unquote(path[len(PATH) + 1:]) if path.startswith(PATH + "/") else None
        try:
            if name is None:
                if method != "POST":
                    return response(405, "method not allowed\n", extra={"Allow": "POST"})
                return await self._enroll(query, headers, body_length, body)
            return await self._named(method, name)
        except StoreUnavailable as error:
            return response(503, f"{error}\n", extra={"Retry-After": "5"})

    async def _enroll(self, query: str, headers: Any, body_length: int | None,
                      body: bytes) -> Response:
        from streamer.voiceprints import check_name

        if "X-Streamer-Transfer-Encoding" in headers:
            return response(411, "send the audio with a Content-Length (chunked transfer "
                                 "encoding is not supported)\n")
        if body_length == -1:
            return response(400, "malformed Content-Length\n")
        if not body_length:
            return response(411 if body_length is None else 400,
                            "send the audio file as the request body, with its "
                            "Content-Length\n")
        if body_length > self.body_limit:
            return response(413, f"the body holds {body_length} bytes; at most "
                                 f"{self.body_limit} are accepted (30 s of audio is enough)\n")
        names = parse_qs(query, keep_blank_values=True).get("name", [])
        name = None
        if names:
            try:
                name = check_name(names[0] if len(names) == 1 else None, "name")
            except ConfigError as error:
                return _error(400, ConfigError(f"{error} (one ?name=)"))
        try:
            voiceprint = await self.run(self._enroll_bytes, body)
        except StreamerError as error:
            return _error(422, error)
        self.on_enrolled()
        answer: dict[str, Any] = {"voiceprint": voiceprint}
        if name is not None:
            await self.store.put_voiceprint(name, voiceprint, self.ttl)
            answer.update(name=name, registered=True,
                          expires_at=round(time.time() + self.ttl, 3) if self.ttl else None)
        return _json(201, answer)

    def _enroll_bytes(self, body: bytes) -> dict[str, Any]:
        # The decoders read files (ffmpeg, for the formats libsndfile lacks, a path).
        handle, path = tempfile.mkstemp(prefix="streamer-enroll-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(body)
            return self.enroll(path)
        finally:
            os.unlink(path)

    async def _named(self, method: str, name: str) -> Response:
        if method in ("GET", "HEAD"):
            found = await self.store.get_voiceprint(name)
            if found is None:
                return response(404, "no voiceprint is registered under this name\n")
            return for_method(method, _json(200, {"name": name, "voiceprint": found}))
        if method == "DELETE":
            if await self.store.delete_voiceprint(name):
                return response(204, b"")
            return response(404, "no voiceprint is registered under this name\n")
        return response(405, "method not allowed\n", extra={"Allow": "GET, HEAD, DELETE"})


def file_enroller(frontend: Any) -> Callable[[str], dict[str, Any]]:
    """``enroll(path)`` for :class:`VoiceprintRoutes`: the voiceprint of an audio file."""
    import numpy as np

    from streamer.audio import SAMPLE_RATE, AudioFile
    from streamer.enrollment import enroll
    from streamer.voiceprints import MAX_ENROLL_SECONDS, VoiceprintError

    def run(path: str) -> dict[str, Any]:
        with AudioFile(path) as audio:
            # Decoding stops just past the limit: a long upload costs no more than that.
            blocks, total = [], 0
            limit = int((MAX_ENROLL_SECONDS + 1) * SAMPLE_RATE)
            for block in audio.blocks():
                blocks.append(block)
                total += len(block)
                if total > limit:
                    raise VoiceprintError(
                        f"enrolment takes at most {MAX_ENROLL_SECONDS:g} s of audio: cut "
                        "it to one speaker's clearest part")
        return enroll(frontend, np.concatenate(blocks))

    return run


__all__ = ["PATH", "VoiceprintRoutes", "file_enroller"]
