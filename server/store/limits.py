"""Request limits kept in Redis: fixed-window rate limits and idempotency keys.

Every write endpoint counts against one named allowance per clock minute
(docs/protocol.md has the table; the allowances are settings): per user for
signed-in calls, per client address for dev login and the admin API. A check
is one round trip (INCR and EXPIRE, pipelined); beyond the allowance the call
is refused with 429 and `Retry-After` (seconds to the next minute) before it
writes anything.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from server.core.errors import Conflict, RateLimited, field_error
from server.core.keys import Keys

IDEMPOTENCY_TTL_S = 24 * 3600
PENDING_TTL_S = 120


async def rate_limit(
    redis: Redis, keys: Keys, uid: str, what: str, per_minute: int, now_ms: int
) -> None:
    """Allow `per_minute` calls of `what` per `uid` per clock minute; else RateLimited (429).

    `uid` is a user id, or `ip:<address>` for calls without a user. `now_ms`
    is the injected clock's time; Retry-After is the seconds to the next minute.
    """
    window = now_ms // 60_000
    key = keys.rate(uid, what, window)
    pipe = redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    count, _ = await pipe.execute()
    if count > per_minute:
        retry = 60 - (now_ms // 1000) % 60
        raise RateLimited(f"at most {per_minute} {what} a minute", retry_after_s=retry)


class Idempotency:
    """`Idempotency-Key` for POSTs: a retry returns the first result.

    `begin` reserves the key (SET NX with a short TTL) or returns the stored
    `(status, body)`; a retry while the first is still running gets 409.
    `finish` stores the result for 24 h; `abort` frees the key after a failure,
    so a failed request may be retried.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.r = redis
        self.k = keys

    def key(self, uid: str, raw: str) -> str:
        if not 0 < len(raw) <= 200 or not raw.isprintable():
            raise field_error("Idempotency-Key", "1-200 printable characters")
        return self.k.idempotency(uid, raw)

    async def begin(self, key: str) -> tuple[int, Any] | None:
        if await self.r.set(key, b"pending", nx=True, ex=PENDING_TTL_S):
            return None
        stored = await self.r.get(key)
        if stored is None or stored == b"pending":
            raise Conflict("a request with this Idempotency-Key is still in progress")
        status, body = orjson.loads(stored)
        return int(status), body

    async def finish(self, key: str, status: int, body: Any) -> None:
        await self.r.set(key, orjson.dumps([status, body]), ex=IDEMPOTENCY_TTL_S)

    async def abort(self, key: str) -> None:
        await self.r.delete(key)
