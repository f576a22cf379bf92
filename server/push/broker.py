"""The process's one Redis pub/sub connection: ref-counted channels, reconnect, canary.

Publications go up to the hub through the narrow `Receiver` protocol; the
broker never imports the hub. Channels are subscribed while at least one
local connection needs them (`acquire`/`release` count references).

Subscription changes are batched: `acquire` and `release` only count and mark
channels dirty; one flusher task sends what changed as one SUBSCRIBE and one
UNSUBSCRIBE (at most `BATCH` channels each), so a thousand sockets signing in
or closing in the same moment cost a few commands, not a round trip each.
`acquire` returns once Redis has confirmed the SUBSCRIBE of its channels (or
the link is down: then the reconnect subscribes every referenced channel and
the hub resyncs), so a caller may read state after it without missing an
event. `release` never waits and never raises. The flusher holds its own
reference to the pub/sub object it writes to, so a link torn down meanwhile
only fails that write; whatever was dirty is sent again on the next link.

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
from collections import Counter, deque
from typing import Any, Protocol

import redis.asyncio as aioredis
import redis.exceptions

from server.core.backoff import Backoff, raise_if_cancelling

log = logging.getLogger("stories.broker")
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
BATCH = 1000  # channels per SUBSCRIBE / UNSUBSCRIBE command
CONFIRM_TIMEOUT_S = 5.0  # `acquire` waits at most this long for Redis to confirm


def _settle(batch: asyncio.Future[None]) -> None:
    """Release the waiters of `batch` (its confirmation is late: they go on without it)."""
    if not batch.done():
        batch.set_result(None)


class Receiver(Protocol):
    """What the broker hands publications to (the hub implements it)."""

    def on_message(self, channel: str, data: bytes) -> None: ...

    def on_resubscribed(self) -> None: ...


class Subscriptions(Protocol):
    """What the hub asks of a broker (`Broker`, or `push/sharded.py`'s on a cluster)."""

    async def acquire(self, *channels: str) -> None: ...

    def release(self, *channels: str) -> None: ...


class Broker:
    """Ref-counted subscriptions over one pub/sub connection, self-healing.

    Classic SUBSCRIBE/PUBLISH. The `_send_*`, `_order`, `_publish_canary` and
    `_on_control` hooks are what `push/sharded.py`'s per-node link overrides for
    SSUBSCRIBE/SPUBLISH.
    """

    MESSAGE = "message"  # the reply type of a publication
    SUBSCRIBED = "subscribe"  # the reply type of a subscription's confirmation

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
        self.nonce = secrets.token_hex(4)
        self._reconnected = False
        self._dirty: set[str] = set()  # channels whose subscription may have to change
        self._flusher: asyncio.Task[None] | None = None
        self._next: asyncio.Future[None] | None = None  # done when the next flush is confirmed
        self._confirming: deque[tuple[bytes, asyncio.Future[None]]] = (
            deque()
        )  # (last channel, batch)
        self.commands = 0  # SUBSCRIBE and UNSUBSCRIBE commands sent by the flusher

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="broker-reader"),
            asyncio.create_task(self._canary(), name="broker-canary"),
        ]

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._flusher] if self._flusher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    async def acquire(self, *channels: str) -> None:
        """Count one more local interest in each channel; SUBSCRIBE the new ones, batched.

        Returns once Redis confirmed them (at most `CONFIRM_TIMEOUT_S`), at once
        when none is new or the link is down (the reconnect subscribes them).
        The wait is the batch's own future (shielded: a cancelled caller leaves it
        to the others), whose one timer is the batch's, not one per caller.
        """
        batch = self.count_in(*channels)
        if batch is not None:
            await asyncio.shield(batch)

    def count_in(self, *channels: str) -> asyncio.Future[None] | None:
        """`acquire`'s counting, done before returning: the future of the batch that
        SUBSCRIBEs the new channels (None when none is new or the link is down)."""
        fresh = False
        for channel in channels:
            self.refs[channel] += 1
            if self.refs[channel] == 1:
                self._dirty.add(channel)
                fresh = True
        return self._kick() if fresh else None

    def release(self, *channels: str) -> None:
        """Count one less interest in each channel; UNSUBSCRIBE those left with none, batched.

        Never waits and never raises: a channel released while the link is down
        is simply not subscribed again on the next link.
        """
        for channel in channels:
            count = self.refs.get(channel, 0)
            if count > 1:
                self.refs[channel] = count - 1
            elif count == 1:
                del self.refs[channel]
                self._dirty.add(channel)
        if self._dirty:
            self._kick()

    def _kick(self) -> asyncio.Future[None] | None:
        """Make sure the flusher runs; the future of the flush that will carry the dirty set.

        None when the link is down (nothing to wait for: `_connect` subscribes
        every referenced channel and flushes what changed meanwhile).
        """
        if self.pubsub is None or not self._ready.is_set():
            return None
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush(), name="broker-flush"
            )
        return self._next

    async def _flush(self) -> None:
        """Send dirty channels as SUBSCRIBE / UNSUBSCRIBE batches until none is left."""
        while self._dirty and self.pubsub is not None and self._ready.is_set():
            pubsub, dirty, done = self.pubsub, self._dirty, self._next
            self._dirty, self._next = set(), None
            subscribe = self._order([c for c in dirty if c in self.refs])
            unsubscribe = [c for c in dirty if c not in self.refs]
            try:
                for start in range(0, len(unsubscribe), BATCH):
                    await self._send_unsubscribe(pubsub, unsubscribe[start : start + BATCH])
                for start in range(0, len(subscribe), BATCH):
                    chunk = subscribe[start : start + BATCH]
                    if done is not None and start + BATCH >= len(subscribe):
                        self._confirming.append((chunk[-1].encode(), done))
                        asyncio.get_running_loop().call_later(CONFIRM_TIMEOUT_S, _settle, done)
                        done = None
                    await self._send_subscribe(pubsub, chunk)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the link went meanwhile: the next one gets these
                log.info("pub/sub subscription change failed (%s); retried on reconnect", exc)
                self._dirty |= dirty
            finally:
                if done is not None and not done.done():
                    done.set_result(None)  # nothing to confirm (only unsubscribes, or it failed)
            await asyncio.sleep(0)  # let more sockets come and go before the next batch

    def _order(self, channels: list[str]) -> list[str]:
        """The order to subscribe `channels` in (the last one's confirmation ends a batch)."""
        return channels

    async def _send_subscribe(self, pubsub: Any, channels: list[str]) -> None:
        """Send the subscription of `channels` (replies come to the reader)."""
        self.commands += 1
        await pubsub.subscribe(*channels)

    async def _send_unsubscribe(self, pubsub: Any, channels: list[str]) -> None:
        """Send the unsubscription of `channels` (replies come to the reader)."""
        self.commands += 1
        await pubsub.unsubscribe(*channels)

    async def _publish_canary(self) -> None:
        """Publish the canary through the ordinary client; a Redis outage is ignored."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.publish(self.canary_channel, self.nonce)

    def _on_control(self, msg: dict[str, Any]) -> None:
        """A reply that is neither a publication nor a subscription's confirmation."""

    def _confirmed(self, channel: bytes) -> None:
        """A subscribe confirmation came: release the batch it ends, if it ends one."""
        while self._confirming and self._confirming[0][1].done():  # timed out: not waited for
            self._confirming.popleft()
        if self._confirming and self._confirming[0][0] == channel:
            _, done = self._confirming.popleft()
            if not done.done():
                done.set_result(None)

    def _release_waiters(self) -> None:
        """The link went: nobody waits for a confirmation that cannot come."""
        waiting = [done for _, done in self._confirming]
        self._confirming.clear()
        if self._next is not None:
            waiting.append(self._next)
            self._next = None
        for done in waiting:
            if not done.done():
                done.set_result(None)

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
        self._release_waiters()
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                await self.pubsub.aclose()
            self.pubsub = None

    async def _connect(self) -> None:
        """Open a pub/sub connection and subscribe every live channel plus the canary."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        channels = [self.canary_channel, *self.refs]
        self._dirty.clear()  # this link starts with every referenced channel; later changes
        # are dirty again and go out once it is ready
        try:
            await self._send_subscribe(pubsub, self._order(channels))
            confirmed = 0
            deadline = time.monotonic() + 5
            while confirmed < len(channels) and time.monotonic() < deadline:
                msg = await pubsub.get_message(timeout=1.0)
                if msg and msg["type"] == self.SUBSCRIBED:
                    confirmed += 1
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        if confirmed < len(channels):
            await pubsub.aclose()
            raise redis.exceptions.ConnectionError("subscriptions were not confirmed")
        self.pubsub = pubsub
        self._reconnected = False
        pubsub.connection.register_connect_callback(self._on_silent_reconnect)
        self._canary_seen = time.monotonic()
        self._ready.set()
        if self._dirty:  # changed while connecting: reconcile on this link
            self._kick()

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
        pubsub = self.pubsub  # this link's; `_drop` may clear the attribute meanwhile
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            if self._reconnected:
                raise redis.exceptions.ConnectionError("pub/sub socket was reconnected")
            if msg is None:
                continue
            # any message proves the link is alive: also the thousands of (un)subscribe
            # confirmations that follow a storm of sockets, read before the canary's turn
            self._canary_seen = time.monotonic()
            if msg["type"] != self.MESSAGE:
                if msg["type"] == self.SUBSCRIBED:
                    self._confirmed(msg["channel"])
                else:
                    self._on_control(msg)
                continue
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
            await self._publish_canary()
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
