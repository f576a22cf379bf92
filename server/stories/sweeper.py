"""Expiry without cron: an in-process sweeper, one at a time across processes.

Every `sweep_interval_s` each process tries to take a short Redis lock
(SET NX PX); the holder ends items whose `expires_at` has passed (archive for
the owner + `story.removed` on the bus, through `StoryWriter.end`), then deletes
media files whose archive retention is over. Reads never wait for it: they
filter on `expires_at` themselves. Sweeping is idempotent, so a lock lost
half-way only means the next holder repeats some harmless work.

A share can be due before its own expiry: ending a source first makes its
shares due (`StoryWriter.end`), so a process that died half-way through is
finished here — a due share whose source is no longer live is ended, any other
item that is not expired yet goes back to its own expiry.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import redis.exceptions

from server.core.backoff import Backoff, raise_if_cancelling
from server.core.errors import StorageUnavailable
from server.core.items import ItemRecord
from server.core.keys import split_item_id
from server.store.store import Store
from server.stories.shares import load_sources
from server.stories.writer import StoryWriter

log = logging.getLogger("stories.sweeper")
BATCH = 200


class Sweeper:
    """Ends expired items and collects old media; `run()` is the background loop."""

    def __init__(self, store: Store, writer: StoryWriter) -> None:
        self.s = store
        self.writer = writer
        self.token = secrets.token_hex(8)

    async def _lock(self) -> bool:
        ttl_ms = max(5000, int(self.s.settings.sweep_interval_s * 5000))
        key = self.s.keys.sweeper_lock()
        got = await self.s.redis.set(key, self.token, nx=True, px=ttl_ms)
        if got:
            return True
        if (await self.s.redis.get(key)) == self.token.encode():
            await self.s.redis.pexpire(key, ttl_ms)
            return True
        return False

    async def sweep_once(self) -> int:
        """One pass if this process holds the lock; returns the number of items ended."""
        if not await self._lock():
            return 0
        return await self._expire_due() + await self._collect_media()

    async def _expire_due(self) -> int:
        now = self.s.clock.now_ms()
        await self.s.redis.zremrangebyscore(self.s.keys.active_owners(), "-inf", now)
        due = await self.s.redis.zrangebyscore(self.s.keys.expiry_schedule(), "-inf", now, 0, BATCH)
        ended = 0
        for raw in due:
            text = raw.decode()
            parsed = split_item_id(text)
            rec = (
                ItemRecord.from_hash(await self.s.redis.hgetall(self.s.keys.item(*parsed)))
                if parsed
                else None
            )
            if rec is None:
                await self.s.redis.zrem(self.s.keys.expiry_schedule(), text)
                continue
            if rec.status == "active" and rec.expires_ms > now:
                ended += await self._end_orphan(rec, now)
                continue
            ended += await self.writer.end(rec, "expired", rec.expires_ms)
        return ended

    async def _end_orphan(self, rec: ItemRecord, now: int) -> int:
        """A live item made due early: end it if it is a share whose source is not live."""
        source_id = rec.shared_from
        source = (await load_sources(self.s, [source_id])).get(source_id) if source_id else None
        if source_id and (source is None or not source.is_live(now)):
            reason = source.end_reason(now) if source else "deleted"
            return int(await self.writer.end(rec, reason, now, source=source))
        await self.s.redis.zadd(self.s.keys.expiry_schedule(), {rec.id: rec.expires_ms})
        return 0

    async def _collect_media(self) -> int:
        now = self.s.clock.now_ms()
        key = self.s.keys.media_gc_schedule()
        due = await self.s.redis.zrangebyscore(key, "-inf", now, 0, BATCH)
        for raw in due:
            parsed = split_item_id(raw.decode())
            if parsed:
                rec = ItemRecord.from_hash(await self.s.redis.hgetall(self.s.keys.item(*parsed)))
                if rec is not None and rec.status != "active":
                    # a share has no files: its media is its source's
                    await self.s.storage.delete([k for k in (rec.media_key, rec.poster_key) if k])
                elif rec is None:  # the record is gone (its hash expired): files by name
                    owner, seq = parsed
                    await self.s.storage.delete_prefix(f"media/{owner}/{seq}-")
            await self.s.redis.zrem(key, raw)
        return 0

    async def run(self) -> None:
        """Sweep forever; Redis errors back off with jitter, cancellation propagates."""
        backoff = Backoff(base_s=0.5, cap_s=15)
        while True:
            try:
                await self.sweep_once()
                backoff.reset()
                delay = self.s.settings.sweep_interval_s
            except asyncio.CancelledError:
                raise
            except (
                redis.exceptions.ConnectionError,
                redis.exceptions.TimeoutError,
                OSError,
                StorageUnavailable,
            ) as exc:
                log.warning("sweeper: redis or media storage unavailable (%s)", exc)
                delay = backoff.next_delay()
            except Exception:
                log.exception("sweeper pass failed")
                delay = backoff.next_delay()
            raise_if_cancelling()
            await asyncio.sleep(delay)
