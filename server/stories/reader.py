"""Reading stories: one item, a user's stories, the tray, the archive.

Every read filters on `expires_at` itself, so an item vanishes at its expiry
even before the sweeper has run, and applies the audience rules of
`server/core/audience.py`; an item the caller may not see is answered as missing.

The tray is computed on read in three round trips whatever the number of
followed owners (on a Redis Cluster: three per node, the nodes in parallel),
no command spanning two slots:
(1) the viewer's following list, close-friend-of and hidden-from sets and seen
map, in one call on the viewer's slot (`sign_in.lua`);
(2) which of those owners may have a ring: one ZMSCORE per bucket of the
active-owners index (`act:owners:{b<n>}`, owner → latest `expires_at`; one ZADD
GT per post keeps it, the sweeper trims it), so owners without stories cost
nothing after this point;
(3) `tray_scan.lua`, which computes those owners' rings inside Redis (the rules
of `server/core/tray.py`) and returns only rings with items, with their User records:
on one Redis one call for every owner, on a Cluster one call per slot (in
effect one per owner), pipelined. (A pipeline of ZRANGEBYSCORE + HMGET per
owner also takes a constant number of round trips but spends ~25 µs of client
CPU per owner; see docs/benchmarks.md.)
(4) Only when those rings hold shares: their sources and the viewer's relations
to the source owners, in one pipeline (`shares.visible_sources`); the shares
that pass are added to their rings (`tray.merge_ring`).

Shares (`server/stories/shares.py`): every read here — one item, a user's stories, the
tray, the archive, media — shows a share only while its source is live and
visible to the caller under the source owner's rules, so the tray's rings and
`user_stories` always count the same items.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.asyncio.client import Pipeline

from server.core.audience import Relation
from server.core.errors import NotFound
from server.core.items import ItemRecord, Json, render
from server.core.keys import bucket, split_item_id
from server.core.tray import (
    ActiveItem,
    TrayState,
    in_tray,
    merge_ring,
    order_tray,
    visible_items,
)
from server.store.client import slot_groups
from server.store.scripts import Batch
from server.store.store import Store
from server.stories.shares import Source, visible_sources


def _user(owner: str, fields: list[bytes | None]) -> Json:
    """A User from `HMGET id handle display_name avatar_url`."""
    uid, handle, name, avatar = (f.decode() if f else None for f in fields)
    if not uid or not handle:
        return {"id": owner}
    return {"id": uid, "handle": handle, "display_name": name or handle, "avatar_url": avatar}


def active_from_reply(raw: Iterable[Any]) -> list[ActiveItem]:
    """Items from a `ZRANGEBYSCORE ... WITHSCORES` reply of an items index: (member, expiry) pairs."""
    return [ActiveItem.parse(member, score) for member, score in raw]


class StoryReader:
    """Audience-checked reads for one caller at a time."""

    def __init__(self, store: Store) -> None:
        self.s = store

    async def record(self, text_id: str) -> ItemRecord | None:
        """The stored record of item `text_id` in any status, or None."""
        parsed = split_item_id(text_id)
        if parsed is None:
            return None
        raw = await self.s.redis.hgetall(self.s.keys.item(*parsed))
        return ItemRecord.from_hash(raw)

    async def visible(self, viewer: str, text_id: str) -> ItemRecord:
        """A live item `viewer` may see. Raises NotFound (404) otherwise, hidden included."""
        return (await self.visible_with_source(viewer, text_id))[0]

    async def visible_with_relation(self, viewer: str, text_id: str) -> tuple[ItemRecord, Relation]:
        """`visible()`, plus how the viewer stands towards the item's owner."""
        rec, relation, _ = await self.visible_with_source(viewer, text_id)
        return rec, relation

    async def visible_with_source(
        self, viewer: str, text_id: str
    ) -> tuple[ItemRecord, Relation, Source]:
        """`visible_with_relation()`, plus the item's root source (the item itself unless a share).

        A share is visible only while its source is live and visible to `viewer`.
        """
        rec = await self.record(text_id)
        if rec is None or not rec.is_live(self.s.clock.now_ms()):
            raise NotFound(f"no story item {text_id}")
        relation = await self.s.graph.relation(viewer, rec.owner)
        if not relation.can_see(rec.audience):
            raise NotFound(f"no story item {text_id}")
        if not rec.shared_from:
            return rec, relation, Source.of(rec)
        source = (await visible_sources(self.s, viewer, [rec.shared_from])).get(rec.shared_from)
        if source is None:
            raise NotFound(f"no story item {text_id}")
        return rec, relation, source

    async def own_live(self, caller: str, text_id: str) -> ItemRecord:
        """The caller's own live item whatever the state of its source (a share the caller
        may no longer see can still be deleted); for anyone else's item, `visible()`."""
        rec = await self.record(text_id)
        if rec is not None and rec.owner == caller and rec.is_live(self.s.clock.now_ms()):
            return rec
        return await self.visible(caller, text_id)

    async def shown(self, viewer: str, recs: list[ItemRecord]) -> list[ItemRecord]:
        """`recs` without the shares whose source is not live and visible to `viewer`."""
        sources = [r.shared_from for r in recs if r.shared_from]
        if not sources:
            return recs
        ok = await visible_sources(self.s, viewer, sources)
        return [r for r in recs if not r.shared_from or r.shared_from in ok]

    async def media_of(self, rec: ItemRecord) -> ItemRecord | None:
        """The record whose files `rec`'s media URLs serve: its own, or for a share its
        source's while the source is live (None once it is not)."""
        if not rec.shared_from:
            return rec
        source = await self.record(rec.shared_from)
        return source if source is not None and source.is_live(self.s.clock.now_ms()) else None

    async def render_many(
        self, viewer: str, recs: list[ItemRecord], archive: bool = False
    ) -> list[Json]:
        """StoryItems for `viewer`: owners, shared-from owners, seen flags, view counts."""
        owner_ids = {r.owner for r in recs}
        roots = {r.shared_from: split_item_id(r.shared_from) for r in recs if r.shared_from}
        owner_ids |= {p[0] for p in roots.values() if p}
        users = await self.s.users.many(sorted(owner_ids))
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.hgetall(self.s.keys.seen(viewer))
        own = [r for r in recs if r.owner == viewer]
        for r in own:
            pipe.zcard(self.s.keys.views(r.owner, r.seq))
        seen_raw, *counts = await pipe.execute()
        seen = {k.decode(): int(v) for k, v in seen_raw.items()}
        count_of = {r.id: c for r, c in zip(own, counts, strict=True)}
        retention = self.s.settings.archive_retention_s * 1000
        out = []
        for r in recs:
            root = roots.get(r.shared_from) if r.shared_from else None
            shared = {"item_id": r.shared_from, "owner": users.get(root[0])} if root else None
            out.append(
                render(
                    r,
                    users.get(r.owner) or {"id": r.owner},
                    self.s.signer,
                    seen=r.owner == viewer or r.seq <= seen.get(r.owner, 0),
                    view_count=count_of.get(r.id),
                    shared_from=shared,
                    archive_until_ms=(r.ended_ms or r.expires_ms) + retention if archive else None,
                )
            )
        return out

    async def active_items(self, owner: str) -> list[ActiveItem]:
        """The owner's items that have not expired, as indexed (any audience)."""
        raw = await self.s.redis.zrangebyscore(
            self.s.keys.items(owner), self.active_floor(), "+inf", withscores=True
        )
        return active_from_reply(raw)

    def active_floor(self) -> str:
        """The ZRANGEBYSCORE minimum of unexpired items: `"(<now ms>"` (expiring now is gone)."""
        return f"({self.s.clock.now_ms()}"

    def queue_active_items(self, pipe: Pipeline, owner: str) -> None:
        """Queue `active_items(owner)`'s read on `pipe`; decode its reply with `active_from_reply`."""
        pipe.zrangebyscore(self.s.keys.items(owner), self.active_floor(), "+inf", withscores=True)

    async def _records(self, owner: str, items: list[ActiveItem]) -> list[ItemRecord]:
        pipe = self.s.redis.pipeline(transaction=False)
        for i in items:
            pipe.hgetall(self.s.keys.item(owner, i.seq))
        now = self.s.clock.now_ms()
        recs = [ItemRecord.from_hash(raw) for raw in await pipe.execute()]
        return [r for r in recs if r is not None and r.is_live(now)]

    async def user_stories(self, viewer: str, owner: Json) -> Json:
        """`{"owner", "items" (oldest first), "first_unseen_id"}` for `viewer`."""
        relation = await self.s.graph.relation(viewer, owner["id"])
        items = visible_items(await self.active_items(owner["id"]), relation, self.s.clock.now_ms())
        recs = await self.shown(viewer, await self._records(owner["id"], items))
        rendered = await self.render_many(viewer, recs)
        unseen = next((i["id"] for i in rendered if not i["seen"]), None)
        return {"owner": owner, "items": rendered, "first_unseen_id": unseen}

    async def tray(self, viewer: str) -> list[Json]:
        """The caller's tray entries in PROTOCOL.md order (see module docstring)."""
        k = self.s.keys
        now = self.s.clock.now_ms()
        viewer_keys = [k.following(viewer), k.close_friend_of(viewer), k.hidden_from(viewer),
                       k.seen(viewer), k.items(viewer), k.user(viewer)]  # fmt: skip
        following, cfof_raw, hidden_raw, seen_raw, _, _ = await self.s.scripts.sign_in(
            keys=viewer_keys, args=["", ""]
        )
        hidden = set(hidden_raw) | {viewer.encode()}
        cfof = {m.decode() for m in cfof_raw}
        seen = {o.decode(): int(v) for o, v in zip(seen_raw[::2], seen_raw[1::2], strict=True)}
        followed = [o for o in following if in_tray(False, True, o in hidden)]  # (viewer in hidden)
        owners = [viewer, *await self._active_owners(followed, now)]
        groups = slot_groups(self.s.redis, [k.items(o) for o in owners])
        batch = Batch(self.s.redis)
        for group in groups:
            keys: list[str] = []
            args: list[int | str] = [now]
            for owner in (owners[i] for i in group):
                rel = "o" if owner == viewer else ("c" if owner in cfof else "f")
                keys += [k.items(owner), k.user(owner)]
                args += [seen.get(owner, 0), rel]
            batch.script(self.s.scripts.tray_scan, keys, args)
        rings: list[TrayState] = []
        users: dict[str, Json] = {}
        shares: dict[str, list[ActiveItem]] = {}
        found = (
            (group[int(flat[n])], flat[n + 1 : n + 6])
            for group, flat in zip(groups, await batch.execute(), strict=True)
            for n in range(0, len(flat), 6)
        )
        for index, (count, latest, first, user, shared) in found:
            owner = owners[index]
            users[owner] = _user(owner, user)
            if count:
                rings.append(
                    TrayState(owner, first > 0, int(count), int(latest), int(first) or None)
                )
            if shared:
                shares[owner] = active_from_reply(zip(shared[::2], shared[1::2], strict=True))
        if shares:
            rings = await self._with_shares(viewer, rings, shares, seen)
        return self._tray_entries(order_tray(viewer, rings), users)

    async def _active_owners(self, owners: list[bytes], now_ms: int) -> list[str]:
        """Those of `owners` (ids as Redis returned them) with an item unexpired at `now_ms`,
        in their order, decoded.

        One ZMSCORE per active-owners bucket, pipelined (one round trip per node).
        The ids stay bytes until they are known active: most followed owners are not.
        """
        by_bucket: dict[int, list[bytes]] = {}
        for owner in owners:
            by_bucket.setdefault(bucket(owner), []).append(owner)
        if not by_bucket:
            return []
        pipe = self.s.redis.pipeline(transaction=False)
        for n, members in by_bucket.items():
            pipe.zmscore(self.s.keys.active_owners(n), members)
        active: set[bytes] = set()
        for members, scores in zip(by_bucket.values(), await pipe.execute(), strict=True):
            active.update(o for o, until in zip(members, scores, strict=True)
                          if until is not None and until > now_ms)  # fmt: skip
        return [o.decode() for o in owners if o in active]

    async def _with_shares(
        self,
        viewer: str,
        rings: list[TrayState],
        shares: dict[str, list[ActiveItem]],
        seen: dict[str, int],
    ) -> list[TrayState]:
        """`rings` with the shares whose sources `viewer` may see added (owners may gain a ring)."""
        ok = await visible_sources(
            self.s, viewer, {i.source or "" for s in shares.values() for i in s}
        )
        by_owner = {r.owner_id: r for r in rings}
        for owner, items in shares.items():
            shown = [i for i in items if i.source in ok]
            state = merge_ring(
                owner, by_owner.get(owner), shown, seen.get(owner, 0), own=owner == viewer
            )
            if state is not None:
                by_owner[owner] = state
        return list(by_owner.values())

    @staticmethod
    def _tray_entries(rings: list[TrayState], users: dict[str, Json]) -> list[Json]:
        """TrayEntry JSON for `rings`, in their order."""
        return [r.entry(users.get(r.owner_id) or {"id": r.owner_id}) for r in rings]

    async def archive(self, owner: str, offset: int, limit: int) -> tuple[list[Json], int | None]:
        """The owner's expired or deleted items, newest first: (items, next offset)."""
        k = self.s.keys
        now = self.s.clock.now_ms()
        cutoff = now - self.s.settings.archive_retention_s * 1000
        await self.s.redis.zremrangebyscore(k.archive(owner), "-inf", cutoff)
        seqs = await self.s.redis.zrevrange(k.archive(owner), offset, offset + limit)
        more = len(seqs) > limit
        pipe = self.s.redis.pipeline(transaction=False)
        for seq in seqs[:limit]:
            pipe.hgetall(k.item(owner, int(seq)))
        recs = [r for r in map(ItemRecord.from_hash, await pipe.execute()) if r is not None]
        rendered = await self.render_many(owner, await self.shown(owner, recs), archive=True)
        return rendered, (offset + limit if more else None)
