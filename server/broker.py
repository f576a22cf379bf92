"""The process's one Redis pub/sub connection: ref-counted channels, reconnect, canary.

Publications go up to the hub through the narrow `Receiver` protocol; the
broker never imports the hub. Channels are subscribed while at least one
local connection needs them (`acquire`/`release` count references).

Failure handling:
- a dropped connection (Redis restart, `CLIENT KILL TYPE pubsub`) ends the
  reader with an error; the broker reconnects with exponential backoff and
  full jitter (reset after success), resubscribes every live channel, waits
  for the confirmations, then calls `receiver.on_resubscribed()` so every
  connection gets a fresh snapshot;
- a silently dead link (no FIN) is caught by a canary: every
  `canary_interval_s` the broker publishes to its own canary channel through
  the ordinary client; if nothing comes back within `canary_timeout_s` the
  process is "deaf", `healthy` turns False (so /readyz answers 503) and the
  pub/sub connection is torn down and rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions

from server.backoff import Backoff, raise_if_cancelling

log = logging.getLogger("stories.broker")
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class Receiver(Protocol):
    """What the broker hands publications to (the hub implements it)."""

    def on_message(self, channel: str, data: bytes) -> None: ...

    def on_resubscribed(self) -> None: ...


class Broker:
    """Ref-counted subscriptions over one pub/sub connection, self-healing."""

    def __init__(
        self,
        redis: aioredis.Redis,
        receiver: Receiver,
        canary_channel: str,
        *,
        canary_interval_s: float = 1.0,
        canary_timeout_s: float = 3.0,
    ) -> None:
        self.redis = redis
        self.receiver = receiver
        self.canary_channel = canary_channel
        self.canary_interval_s = canary_interval_s
        self.canary_timeout_s = canary_timeout_s
        self.refs: Counter[str] = Counter()
        self.pubsub: Any = None
        self.healthy = False
        self.reconnects = 0
        self._canary_seen = time.monotonic()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.nonce = secrets.token_hex(4)
        self._reconnected = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="broker-reader"),
            asyncio.create_task(self._canary(), name="broker-canary"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    async def acquire(self, channel: str) -> None:
        """Count one more local interest in `channel`; SUBSCRIBE on the first."""
        self.refs[channel] += 1
        if self.refs[channel] == 1 and self.pubsub is not None and self._ready.is_set():
            async with self._lock:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.pubsub.subscribe(channel)

    async def release(self, channel: str) -> None:
        """Count one less interest; UNSUBSCRIBE when none is left."""
        if self.refs[channel] <= 0:
            return
        self.refs[channel] -= 1
        if self.refs[channel] == 0:
            del self.refs[channel]
            if self.pubsub is not None and self._ready.is_set():
                async with self._lock:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await self.pubsub.unsubscribe(channel)

    async def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Wait until subscribed (or `timeout_s`); True when ready."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    async def _drop(self) -> None:
        self._ready.clear()
        self.healthy = False
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None

    async def _connect(self) -> None:
        """Open a pub/sub connection and subscribe every live channel plus the canary."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        channels = [self.canary_channel, *self.refs]
        await pubsub.subscribe(*channels)
        confirmed = 0
        deadline = time.monotonic() + 5
        while confirmed < len(channels) and time.monotonic() < deadline:
            msg = await pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "subscribe":
                confirmed += 1
        if confirmed < len(channels):
            await pubsub.aclose()
            raise redis.exceptions.ConnectionError("subscriptions were not confirmed")
        self.pubsub = pubsub
        self._reconnected = False
        pubsub.connection.register_connect_callback(self._on_silent_reconnect)
        self._canary_seen = time.monotonic()
        self._ready.set()

    async def _on_silent_reconnect(self, connection: Any) -> None:
        """redis-py reconnected the pub/sub socket by itself: rebuild ours instead.

        Its automatic resubscribe gives no signal to snapshot, so the reader
        treats the reconnect as a loss and goes through `_connect` again.
        """
        self._reconnected = True

    async def _run(self) -> None:
        backoff = Backoff(base_s=0.05, cap_s=5.0)
        first = True
        while True:
            try:
                await self._connect()
                backoff.reset()
                if not first:
                    self.reconnects += 1
                    log.info("pub/sub reconnected; resubscribed %d channels", len(self.refs))
                    self.receiver.on_resubscribed()
                first = False
                await self._read()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                log.warning("pub/sub connection lost: %s", exc)
            except Exception:
                log.exception("pub/sub reader failed")
            await self._drop()
            raise_if_cancelling()
            await asyncio.sleep(backoff.next_delay())

    async def _read(self) -> None:
        while True:
            msg = await self.pubsub.get_message(timeout=1.0)
            if self._reconnected:
                raise redis.exceptions.ConnectionError("pub/sub socket was reconnected")
            if msg is None or msg["type"] != "message":
                continue
            self._canary_seen = time.monotonic()  # any message proves the link is alive
            channel = msg["channel"].decode()
            if channel == self.canary_channel:
                self._canary_seen = time.monotonic()
                self.healthy = True
                continue
            try:
                self.receiver.on_message(channel, msg["data"])
            except Exception:
                log.exception("hub failed on a message from %s", channel)

    async def _canary(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.canary_interval_s)
            if not self._ready.is_set():
                continue
            with contextlib.suppress(*REDIS_ERRORS):
                await self.redis.publish(self.canary_channel, self.nonce)
            silent = time.monotonic() - self._canary_seen
            if silent > self.canary_timeout_s and self.pubsub is not None:
                log.warning("pub/sub deaf for %.1f s; reconnecting", silent)
                self.healthy = False
                with contextlib.suppress(Exception):
                    conn = self.pubsub.connection
                    if conn is not None:
                        await conn.disconnect()

    def readiness(self) -> str:
        """ "ok" when the canary came back recently, else why not (for /readyz)."""
        if not self._ready.is_set():
            return "pub/sub not connected"
        if not self.healthy and time.monotonic() - self._canary_seen > self.canary_timeout_s:
            return "pub/sub deaf (canary not received)"
        return "ok"
