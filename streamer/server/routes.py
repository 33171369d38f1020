"""Plain HTTP responses served on the websocket port: health, metrics, the web page."""
from __future__ import annotations

import dataclasses
import email.utils
import http
import re
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

WEB_ROOT = Path(__file__).resolve().parents[1] / "web"
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
#: Methods the plain HTTP routes answer; the websocket route takes GET only.
READ_METHODS = ("GET", "HEAD")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
}


def response(status: int, body: bytes | str, content_type: str = "text/plain; charset=utf-8",
             extra: dict[str, str] | None = None) -> Response:
    """An HTTP response that closes the connection afterwards."""
    data = body.encode() if isinstance(body, str) else body
    status_value = http.HTTPStatus(status)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(data))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ])
    for name, value in (extra or {}).items():
        headers[name] = value
    return Response(status_value.value, status_value.phrase, headers, data)


def not_allowed(allowed: tuple[str, ...] = READ_METHODS) -> Response:
    return response(405, "method not allowed\n", extra={"Allow": ", ".join(allowed)})


def for_method(method: str, answer: Response) -> Response:
    """``answer`` as the reply to a HEAD request: its headers (Content-Length included),
    no body."""
    return dataclasses.replace(answer, body=b"") if method == "HEAD" else answer


def static_path(path: str, root: Path = WEB_ROOT) -> Path | None:
    """The file of the web page at ``path`` (``/`` is ``index.html``), or ``None``."""
    name = "index.html" if path == "/" else path[1:] if path.startswith("/") else ""
    if not _STATIC_NAME.match(name):
        return None
    file = root / name
    try:
        return file if file.is_file() else None
    except OSError:  # a name the file system refuses is no file of ours
        return None


def static_file(file: Path) -> Response:
    """The response serving ``file`` of the web page (found by :func:`static_path`)."""
    content_type = CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
    return response(200, file.read_bytes(), content_type)


__all__ = ["WEB_ROOT", "READ_METHODS", "response", "not_allowed", "for_method",
           "static_path", "static_file"]
