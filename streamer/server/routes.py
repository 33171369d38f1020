"""Plain HTTP responses served on the websocket port: health, metrics, the web page."""
from __future__ import annotations

import email.utils
import http
import re
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

WEB_ROOT = Path(__file__).resolve().parents[1] / "web"
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
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


def static_file(path: str, root: Path = WEB_ROOT) -> Response | None:
    """The file of the web page at ``path`` (``/`` is ``index.html``), or ``None``."""
    name = "index.html" if path == "/" else path.lstrip("/")
    if not _STATIC_NAME.match(name):
        return None
    file = root / name
    if not file.is_file():
        return None
    content_type = CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
    return response(200, file.read_bytes(), content_type)


__all__ = ["WEB_ROOT", "response", "static_file"]
