"""Admission of sockets signing in: a bounded number at once, a bounded queue, then "retry".

A sign-in is a few Redis round trips (`Hub.sign_in`, `Hub.attach`). When
thousands of clients come back at once (a network blip, a failover), starting
them all would take every connection of the Redis pool (100) and leave the rest
waiting on the pool until its timeout fails them. Instead at most
`concurrency` sign-ins run at once and up to `queue` more wait their turn in
arrival order; a socket beyond that is told to come back later: the endpoint
closes it with 1013 and `{"retry_after_ms": n}` in the close reason, `n`
spread uniformly over `ws_reconnect_base_ms + [0, ws_reconnect_spread_ms)` so
the retries do not return as one wave (`retry.retry_reason`, as the 1012 of a drain).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Busy(Exception):
    """The sign-in queue is full: tell the client to retry later."""


class SignInGate:
    """At most `concurrency` sign-ins at once, at most `queue` waiting; beyond: `Busy`.

    `admitted` and `turned_away` count sign-ins, for benchmarks and tests.
    """

    def __init__(self, concurrency: int, queue: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self.queue = queue
        self.waiting = 0
        self.admitted = 0
        self.turned_away = 0

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold a sign-in slot for the block; raises Busy when `queue` already wait."""
        if self._slots.locked() and self.waiting >= self.queue:
            self.turned_away += 1
            raise Busy("too many sockets signing in")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.admitted += 1
        try:
            yield
        finally:
            self._slots.release()
