"""The pilot rollout gate: who may post stories while they launch to a cohort.

The gate is one JSON value in Redis (one key, so one Cluster slot, which every
post in the deployment reads), so it changes without a restart. Each process
keeps the value it read for at most `CACHE_S` (1 s) of real time before reading
it again: a change made elsewhere (another process, `stories rollout set`)
applies to posts within a second; one made through this process's `set` at once. A user may post when the gate is open to all, or the user (id or
handle) is on the allowlist, or `bucket(user_id) < percent`, or the token's
country claim is in `countries`. Reading is never gated.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from server.core.errors import StoriesNotEnabled, field_error

CACHE_S = 1.0  # how long a process trusts the gate it read, seconds of monotonic time


@dataclass(frozen=True)
class Gate:
    """`open`: everyone may post (the default). Otherwise the pilot rules apply."""

    open: bool = True
    allow: list[str] = field(default_factory=list)  # user ids or handles
    percent: int = 0  # 0-100: share of users by stable hash of the user id
    countries: list[str] = field(default_factory=list)  # ISO 3166-1 alpha-2, upper case

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def parse(cls, raw: Any) -> Gate:
        """From a JSON object; raises InvalidField (422) on a bad field."""
        if not isinstance(raw, dict):
            raise field_error("body", "must be a JSON object")
        unknown = set(raw) - {"open", "allow", "percent", "countries"}
        if unknown:
            raise field_error(sorted(unknown)[0], "unknown field")
        open_ = raw.get("open", False)
        allow = raw.get("allow", [])
        percent = raw.get("percent", 0)
        countries = raw.get("countries", [])
        if not isinstance(open_, bool):
            raise field_error("open", "must be true or false")
        if not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
            raise field_error("allow", "must be a list of user ids or handles")
        if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
            raise field_error("percent", "must be an integer 0-100")
        if not isinstance(countries, list) or not all(
            isinstance(c, str) and len(c) == 2 and c.isascii() and c.isalpha() for c in countries
        ):
            raise field_error("countries", "must be a list of two-letter country codes")
        return cls(open_, allow, percent, [c.upper() for c in countries])


def bucket(user_id: str) -> int:
    """Stable 0-99 bucket of a user id (first 8 bytes of SHA-256, mod 100)."""
    return int.from_bytes(hashlib.sha256(user_id.encode()).digest()[:8], "big") % 100


def may_post(gate: Gate, user_id: str, handle: str, country: str | None) -> bool:
    """The gate's decision for one user (pure)."""
    if gate.open:
        return True
    if user_id in gate.allow or handle in gate.allow:
        return True
    if bucket(user_id) < gate.percent:
        return True
    return bool(country) and str(country).upper() in gate.countries


class Rollout:
    """Read and write the gate stored at one Redis key; `check` reads through a 1 s cache.

    `monotonic` is the clock of the cache (seconds; real time, not the injected
    story clock, which tests hold still).
    """

    def __init__(self, redis: Redis, key: str, monotonic: Callable[[], float] = time.monotonic):
        self.r = redis
        self.key = key
        self._monotonic = monotonic
        self._cached: tuple[float, Gate] | None = None  # (read at, gate)

    async def get(self) -> Gate:
        """The gate as stored now (one GET; refreshes the cache)."""
        raw = await self.r.get(self.key)
        gate = Gate(**orjson.loads(raw)) if raw else Gate()
        self._cached = (self._monotonic(), gate)
        return gate

    async def current(self) -> Gate:
        """The gate, as read within the last `CACHE_S` seconds (else read again)."""
        cached = self._cached
        if cached is not None and self._monotonic() - cached[0] < CACHE_S:
            return cached[1]
        return await self.get()

    async def set(self, gate: Gate) -> None:
        await self.r.set(self.key, orjson.dumps(gate.to_json()))
        self._cached = (self._monotonic(), gate)

    async def check(self, user_id: str, handle: str, country: str | None) -> None:
        """Raise StoriesNotEnabled (403) when the user may not post (gate from `current`)."""
        if not may_post(await self.current(), user_id, handle, country):
            raise StoriesNotEnabled("stories are in a pilot and not yet enabled for this account")
