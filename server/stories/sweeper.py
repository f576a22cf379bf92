"""Expiry without cron: an in-process sweeper, bucket by bucket, shared across processes.

The expiry and media-gc schedules and the active-owners index are split into
`BUCKETS` buckets (`core/keys.py`; on a Redis Cluster they spread over the
shards). Every `sweep_interval_s` each process tries to take each bucket's
short Redis lock (SET NX PX, all buckets in one pipeline); for every bucket it
got (a pass with nothing due costs three round trips for all buckets: lock,
read what is due, unlock), it trims the bucket's active owners, ends the items
whose `expires_at` has passed (archive for the owner + `story.removed` on the bus, through
`StoryWriter.end`), deletes media files whose archive retention is over, and
then frees the lock. A bucket is swept by one process at a time, and the
buckets go to whichever processes try them first, so many processes share the
work. Reads never wait for it: they filter on `expires_at` themselves.
Sweeping is idempotent, so a lock lost half-way only means the next holder
repeats some harmless work.

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
from server.core.keys import BUCKETS, split_item_id
from server.store.scripts import Batch
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

    async def _lock(self) -> list[int]:
        """The buckets whose locks this process took now (SET NX PX, one pipeline)."""
        ttl_ms = max(5000, int(self.s.settings.sweep_interval_s * 5000))
        pipe = self.s.redis.pipeline(transaction=False)
        for n in range(BUCKETS):
            pipe.set(self.s.keys.sweeper_lock(n), self.token, nx=True, px=ttl_ms)
        return [n for n, got in enumerate(await pipe.execute()) if got]

    async def _unlock(self, held: list[int]) -> None:
        """Free the locks of `held` that are still this process's (compare and delete)."""
        batch = Batch(self.s.redis)
        for n in held:
            batch.script(self.s.scripts.unlock, [self.s.keys.sweeper_lock(n)], [self.token])
        await batch.execute()

    async def sweep_once(self) -> int:
        """One pass over the buckets this process could lock; returns the number of items ended."""
        held = await self._lock()
        if not held:
            return 0
        try:
            ended = 0
            for n, (due, media_due) in (await self._due(held)).items():
                ended += await self._expire_due(due)
                await self._collect_media(n, media_due)
            return ended
        finally:
            await self._unlock(held)

    async def _due(self, held: list[int]) -> dict[int, tuple[list[bytes], list[bytes]]]:
        """Per held bucket: trim its active owners; its due items and due media (one pipeline)."""
        now = self.s.clock.now_ms()
        k = self.s.keys
        pipe = self.s.redis.pipeline(transaction=False)
        for n in held:
            pipe.zremrangebyscore(k.active_owners(n), "-inf", now)
            pipe.zrangebyscore(k.expiry_schedule(n), "-inf", now, 0, BATCH)
            pipe.zrangebyscore(k.media_gc_schedule(n), "-inf", now, 0, BATCH)
        replies = await pipe.execute()
        return {n: (replies[3 * i + 1], replies[3 * i + 2]) for i, n in enumerate(held)}

    async def _expire_due(self, due: list[bytes]) -> int:
        now = self.s.clock.now_ms()
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
                await self.s.redis.zrem(self.s.keys.expiry_schedule_of(text), text)
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
        await self.s.redis.zadd(self.s.keys.expiry_schedule_of(rec.id), {rec.id: rec.expires_ms})
        return 0

    async def _collect_media(self, n: int, due: list[bytes]) -> None:
        """Delete the files of bucket `n`'s `due` items (their archive retention is over)."""
        key = self.s.keys.media_gc_schedule(n)
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
