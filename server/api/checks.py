"""Checks of the fields a client sends with a post, a share or a capture.

Each returns the clean value or raises InvalidField (422, problem+json with the
field's name), so every endpoint refuses the same input the same way.
"""

from __future__ import annotations

from typing import Any

from server.core.audience import AUDIENCES
from server.core.errors import field_error

LIFETIMES_H = (6, 12, 24, 48)


def check_caption(raw: Any, max_chars: int) -> str | None:
    """None for empty; else text of at most `max_chars`. Raises InvalidField (422)."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise field_error("caption", "must be text")
    text = raw.strip()
    if len(text) > max_chars:
        raise field_error("caption", f"at most {max_chars} characters")
    if any(not (ch.isprintable() or ch == "\n") for ch in text):
        raise field_error("caption", "control characters are not allowed")
    return text or None


def check_audience(raw: Any) -> str:
    """One of `AUDIENCES`; "followers" when absent or empty. Raises InvalidField (422)."""
    value = raw if raw not in (None, "") else "followers"
    if value not in AUDIENCES:
        raise field_error("audience", "one of public, followers, close_friends")
    return str(value)


def check_lifetime(raw: Any, default_h: int) -> int:
    """Hours, one of `LIFETIMES_H`; `default_h` when absent. Raises InvalidField (422)."""
    if raw in (None, ""):
        return default_h
    if str(raw) not in {str(h) for h in LIFETIMES_H}:
        raise field_error("lifetime_h", "one of 6, 12, 24, 48")
    return int(raw)
