"""Moving a Redis written by an older version onto today's key layout, at startup.

Before the global indexes were split into buckets (`core/keys.py`), the expiry
schedule, the active-owners index and the media-gc schedule were one key each.
A server started on such a Redis moves their entries into the buckets, so
items posted before the upgrade still expire, are swept and keep their owners'
rings, then deletes the old keys. Idempotent and safe for many processes at
once: entries are added with ZADD NX (schedules: an entry already moved or
rewritten since wins) or GT (active owners: the later expiry wins), and the old
key is deleted only after its last entry was copied. Costs one EXISTS per key
when there is nothing to move.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from server.core.keys import Keys, bucket

log = logging.getLogger("stories.migrate")
CHUNK = 500


async def move_legacy_indexes(redis: Redis, keys: Keys) -> int:
    """Move the single-key indexes of an older version into their buckets; entries moved."""
    expire, owners, media_gc = keys.legacy_global_indexes()
    targets = {expire: keys.expiry_schedule, owners: keys.active_owners,
               media_gc: keys.media_gc_schedule}  # fmt: skip
    moved = 0
    for old, bucket_key in targets.items():
        if not await redis.exists(old):
            continue
        by_owner = old == owners
        cursor = 0
        while True:
            cursor, entries = await redis.zscan(old, cursor, count=CHUNK)
            pipe = redis.pipeline(transaction=False)
            for member, score in entries:  # an owner id or an item id: bucket(id) either way
                name = member.decode()
                pipe.zadd(bucket_key(bucket(name)), {name: score}, gt=by_owner, nx=not by_owner)
            if entries:
                await pipe.execute()
            moved += len(entries)
            if cursor == 0:
                break
        await redis.delete(old)
        log.info("moved %s into %s buckets", old, bucket_key(0).rsplit(":", 1)[0])
    return moved
