"""Log hygiene for what clients control: bearer tokens (`?token=<jwt>` on /ws would
otherwise be logged in full) and uvicorn's traceback for a text frame that is not
UTF-8 (any client could fill the log with them; the socket is closed 1007 anyway)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

TOKEN_RE = re.compile(r"(token=)[^&\s\"']+")
UTF8_ERROR = "Invalid UTF-8 sequence received from client"


def redact(value: object) -> object:
    """`value` with every `token=<anything>` rewritten to `token=[redacted]` (str only)."""
    if isinstance(value, str) and "token=" in value:
        return TOKEN_RE.sub(r"\1[redacted]", value)
    return value


class RedactTokens(logging.Filter):
    """Rewrites `token=<anything>` to `token=[redacted]` in a record's format and its args.

    The args are redacted one by one and keep their shape: uvicorn's access
    formatter unpacks `record.args` as `(client, method, path, http version,
    status)`, so a record whose args were flattened into its message breaks it
    ("--- Logging error ---", and the access line is lost).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "token=" in record.msg and record.args:
            # the token is in a placeholder of the format (`"?token=%s"`): flatten this one
            record.msg, record.args = redact(record.getMessage()), ()
        else:
            record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: redact(v) for k, v in record.args.items()}
        if record.exc_info and isinstance(record.msg, str) and record.msg.startswith(UTF8_ERROR):
            record.exc_info, record.exc_text = None, None  # one line, not a traceback
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    """Attach the filter to uvicorn's loggers (idempotent)."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
