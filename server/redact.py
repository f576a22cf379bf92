"""Log hygiene for what clients control: bearer tokens (`?token=<jwt>` on /ws would
otherwise be logged in full) and uvicorn's traceback for a text frame that is not
UTF-8 (any client could fill the log with them; the socket is closed 1007 anyway)."""

from __future__ import annotations

import logging
import re

TOKEN_RE = re.compile(r"(token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Rewrites `token=<anything>` to `token=[redacted]` in a record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg, record.args = TOKEN_RE.sub(r"\1[redacted]", message), ()
        if record.exc_info and message.startswith("Invalid UTF-8 sequence received from client"):
            record.exc_info, record.exc_text = None, None  # one line, not a traceback
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    """Attach the filter to uvicorn's loggers (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
