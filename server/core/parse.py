"""Client input by explicit ASCII rules, in one place: numbers, ids, cursors, byte ranges.

Python's own helpers are wider than any wire format: `str.isdigit()` is true
for `"²"` and `"٣"`, `int()` accepts `"٣"`, `" 7"` and `"1_000"` (and refuses
`"²"`), and `re`'s `$` matches before a trailing newline. Every number, id and
cursor a client sends is parsed here instead, by the grammar of its format:
ASCII `0-9` only, a bounded number of digits (Redis integers are signed
64-bit; 18 digits always fit), ids matched whole. Functions return None for
input that does not parse, and callers turn that into their own 4xx; only the
Range parser raises, because it has more than one way to fail.

Byte ranges follow RFC 9110 section 14 (`Range: bytes=0-99, -500`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import NoReturn

from server.core.errors import BadRequest, RangeNotSatisfiable

MAX_DIGITS = 18  # < 2**63: any value parsed here fits a Redis integer
USER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # matched whole (`fullmatch`), never `match`
MAX_SEQ_DIGITS = 15
MAX_RANGES = 100  # more ranges than this in one Range header: 416 (RFC 9110 section 15.5.17)


def uint(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """`1*DIGIT` of ASCII `0-9` (leading zeros allowed), at most `max_digits` long; else None.

    >>> uint("0042"), uint("²"), uint("٣"), uint(" 7"), uint("1_0"), uint("")
    (42, None, None, None, None, None)
    """
    if not 0 < len(text) <= max_digits or not text.isascii() or not text.isdigit():
        return None  # isdigit() on ASCII text is exactly 0-9
    return int(text)


def canonical_uint(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """`uint`, without leading zeros (one number, one spelling): `"7"`, never `"07"`."""
    value = uint(text, max_digits)
    return value if value is not None and str(value) == text else None


def int_in(text: str, lo: int, hi: int) -> int | None:
    """A `uint` within `lo..hi` inclusive, else None (`hi` bounds the digits too)."""
    value = uint(text, max(1, len(str(hi))))
    return value if value is not None and lo <= value <= hi else None


def is_user_id(text: str) -> bool:
    """1-64 of `[A-Za-z0-9_-]`, the whole string (no trailing newline)."""
    return USER_ID_RE.fullmatch(text) is not None


def split_item_id(text: str) -> tuple[str, int] | None:
    """`"u_ab.7"` → `("u_ab", 7)`; None when `text` is not an item id.

    An item id is `<user id>.<seq>`, seq a positive decimal of at most 15
    ASCII digits without leading zeros, so every item has exactly one id.
    """
    owner, sep, seq_text = text.rpartition(".")
    seq = canonical_uint(seq_text, MAX_SEQ_DIGITS) if sep else None
    if not seq or not is_user_id(owner):
        return None
    return owner, seq


def encode_offset_cursor(offset: int) -> str:
    """The opaque cursor of a list page that continues at `offset` (`o:<offset>`, base64url)."""
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def offset_cursor(cursor: str) -> int | None:
    """The offset in a cursor made by `encode_offset_cursor`, or None when it is not one."""
    if not cursor.isascii():
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    kind, _, value = text.partition(":")
    return canonical_uint(value) if kind == "o" else None


def score_cursor(cursor: str) -> tuple[int, str] | None:
    """`"<score>:<user id>"` (a viewers page cursor) → `(score, user id)`, or None."""
    score_text, sep, member = cursor.partition(":")
    score = canonical_uint(score_text) if sep else None
    if score is None or not is_user_id(member):
        return None
    return score, member


def content_length(header: str | None) -> int | None:
    """A `Content-Length` value (RFC 9110 section 8.6: `1*DIGIT`), or None when absent or bad."""
    return None if header is None else uint(header.strip(" \t"))


def byte_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of a `Range` header for a representation of `size` bytes.

    Returns `[(first, last)]` (inclusive byte positions, in request order,
    unsatisfiable ones left out), or None when the header must be ignored
    (a unit other than `bytes`: RFC 9110 section 14.2, "MUST ignore").
    Raises BadRequest (400) for a malformed range set, RangeNotSatisfiable
    (416, with `Content-Range: bytes */size`) when no range is satisfiable
    or there are more than `MAX_RANGES`.
    """
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None if sep and unit.strip(" \t") else _malformed()
    parts = [p for p in (p.strip(" \t") for p in spec.split(",")) if p]  # empty ones are allowed
    if not parts:
        _malformed()
    if len(parts) > MAX_RANGES:
        raise RangeNotSatisfiable(size, f"at most {MAX_RANGES} ranges per request")
    ranges = [r for r in (_one_range(p, size) for p in parts) if r is not None]
    if not ranges:
        raise RangeNotSatisfiable(size)
    return ranges


def _one_range(part: str, size: int) -> tuple[int, int] | None:
    """One `int-range` (`first-[last]`) or `suffix-range` (`-length`); None: unsatisfiable."""
    first_text, sep, last_text = part.partition("-")
    first, last = uint(first_text), uint(last_text)
    if not sep or (first_text and first is None) or (last_text and last is None):
        _malformed()
    if first is None:  # suffix-range: the last `last` bytes
        if last is None:
            _malformed()
        return (max(0, size - last), size - 1) if last and size else None
    if last is not None and last < first:
        _malformed()
    if first >= size:
        return None
    return first, size - 1 if last is None else min(last, size - 1)


def _malformed() -> NoReturn:
    raise BadRequest("malformed Range header; expected e.g. `bytes=0-1023`")
