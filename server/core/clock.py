"""Time: an injectable clock and the RFC 3339 millisecond format of the API.

All times inside the server are integer milliseconds since the Unix epoch
(`*_ms`). `Clock.now_ms()` is the only source of "now", so tests move time
instead of sleeping (STYLE.md, "Inject the clock").
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Anything with `now_ms() -> int` (milliseconds since the epoch, UTC)."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock tests move by hand: `advance(ms)`; starts at `start_ms`."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = start_ms if start_ms is not None else time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += ms


def rfc3339(ms: int) -> str:
    """Epoch milliseconds → `2026-11-29T12:00:00.123Z` (RFC 3339, UTC, milliseconds)."""
    return f"{_second(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(s: int) -> str:
    """`2026-11-29T12:00:00` for epoch second `s`: a tray repeats the same few thousand."""
    return datetime.fromtimestamp(s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_rfc3339(text: str) -> int:
    """RFC 3339 string → epoch milliseconds. Raises ValueError on bad input."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("time zone required")
    return int(dt.timestamp() * 1000)
