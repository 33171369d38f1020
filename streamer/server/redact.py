"""Credentials never reach the logs: at DEBUG the websockets library logs every request
line and header of a handshake, ``Authorization`` and ``?token=`` included."""
from __future__ import annotations

import logging
import re

_HEADER = re.compile(r"(?i)\b((?:proxy-)?authorization|cookie)(\s*:\s*)\S.*")
_QUERY = re.compile(r"(?i)([?&;]token=)[^&;#\s]*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with header credentials and ``token=`` query values masked."""
    return _QUERY.sub(rf"\1{REDACTED}", _HEADER.sub(rf"\1\2{REDACTED}", text))


class SecretsFilter(logging.Filter):
    """A logging filter that masks credentials in the records of the logger it is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def redact_secrets(logger: logging.Logger) -> logging.Logger:
    """Put a :class:`SecretsFilter` on ``logger`` (once) and return it."""
    if not any(isinstance(f, SecretsFilter) for f in logger.filters):
        logger.addFilter(SecretsFilter())
    return logger


__all__ = ["SecretsFilter", "redact", "redact_secrets", "REDACTED"]
