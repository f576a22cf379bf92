"""The social graph: following, close friends, hidden-from.

Each relation is written on both sides so that every read is one key:
`following`/`followers` ZSETs (member → since ms), `close_friends`/`close_friend_of`
and `hidden`/`hidden_from` SETs. The two sides live on different slots, so the
pair is written by one non-transactional pipeline; every write is idempotent
and a retry repairs a half-applied one.
"""

from __future__ import annotations

from redis.asyncio import Redis

from server.core.audience import Relation
from server.core.keys import Keys


class Graph:
    """Follow, close-friends and hidden relations in Redis."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.r = redis
        self.k = keys

    async def follow(self, uid: str, owner: str, now_ms: int) -> bool:
        """`uid` follows `owner`; True when it is new."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.k.following(uid), {owner: now_ms}, nx=True)
        pipe.zadd(self.k.followers(owner), {uid: now_ms}, nx=True)
        added, _ = await pipe.execute()
        return bool(added)

    async def unfollow(self, uid: str, owner: str) -> bool:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self.k.following(uid), owner)
        pipe.zrem(self.k.followers(owner), uid)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def set_close_friend(self, owner: str, friend: str, on: bool) -> bool:
        """Add or remove `friend` from `owner`'s close friends; True when it changed."""
        op = "sadd" if on else "srem"
        pipe = self.r.pipeline(transaction=False)
        getattr(pipe, op)(self.k.close_friends(owner), friend)
        getattr(pipe, op)(self.k.close_friend_of(friend), owner)
        changed, _ = await pipe.execute()
        return bool(changed)

    async def set_hidden(self, owner: str, viewer: str, on: bool) -> bool:
        """Hide (or unhide) all of `owner`'s stories from `viewer`; True when it changed."""
        op = "sadd" if on else "srem"
        pipe = self.r.pipeline(transaction=False)
        getattr(pipe, op)(self.k.hidden(owner), viewer)
        getattr(pipe, op)(self.k.hidden_from(viewer), owner)
        changed, _ = await pipe.execute()
        return bool(changed)

    async def relation(self, viewer: str, owner: str) -> Relation:
        """How `viewer` stands towards `owner`, in one round trip."""
        if viewer == owner:
            return Relation(is_owner=True)
        pipe = self.r.pipeline(transaction=False)
        pipe.zscore(self.k.following(viewer), owner)
        pipe.sismember(self.k.close_friends(owner), viewer)
        pipe.sismember(self.k.hidden(owner), viewer)
        follows, cf, hidden = await pipe.execute()
        return Relation(follows=follows is not None, close_friend=bool(cf), hidden=bool(hidden))

    async def page(self, key: str, offset: int, limit: int) -> tuple[list[str], int | None]:
        """One page of a ZSET relation, newest first: (ids, next offset or None)."""
        raw = await self.r.zrevrange(key, offset, offset + limit)
        ids = [m.decode() for m in raw]
        more = len(ids) > limit
        return ids[:limit], (offset + limit if more else None)

    async def set_page(self, key: str, offset: int, limit: int) -> tuple[list[str], int | None]:
        """One page of a SET relation, sorted by id: (ids, next offset or None)."""
        ids = sorted(m.decode() for m in await self.r.smembers(key))
        chunk = ids[offset : offset + limit]
        return chunk, (offset + limit if offset + limit < len(ids) else None)

    async def followers(self, owner: str) -> list[str]:
        """Every follower id of `owner` (for admin tools and benchmarks; not on a hot path)."""
        return [m.decode() for m in await self.r.zrange(self.k.followers(owner), 0, -1)]
