"""Checks of the fields a client sends with a post, a share or a capture.

Each returns the clean value or raises InvalidField (422, problem+json with the
field's name), so every endpoint refuses the same input the same way.
"""

from __future__ import annotations

from typing import Any

from server.core.audience import AUDIENCES
from server.core.errors import field_error

LIFETIMES_H = (6, 12, 24, 48)


def check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    """Refuse a JSON body with a field the endpoint does not know (422 naming it), so a
    misspelt `captoin` is an error, not a silently captionless post."""
    unknown = set(body) - allowed
    if unknown:
        raise field_error(
            sorted(unknown)[0], f"unknown field; expected {', '.join(sorted(allowed))}"
        )


def _text(field: str, raw: Any, max_chars: int) -> str:
    """`raw` stripped: text of at most `max_chars`, printable but for newlines. Raises 422."""
    if not isinstance(raw, str):
        raise field_error(field, "must be text")
    text = raw.strip()
    if len(text) > max_chars:
        raise field_error(field, f"at most {max_chars} characters")
    if any(not (ch.isprintable() or ch == "\n") for ch in text):
        raise field_error(field, "control characters are not allowed")
    return text


def check_caption(raw: Any, max_chars: int) -> str | None:
    """None for empty; else text of at most `max_chars`. Raises InvalidField (422)."""
    return None if raw is None else _text("caption", raw, max_chars) or None


def check_reply(raw: Any, max_chars: int) -> str:
    """The text of a reply: 1-`max_chars` characters once stripped, as a caption's rules."""
    text = _text("text", raw, max_chars)
    if not text:
        raise field_error("text", f"1-{max_chars} characters")
    return text


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
