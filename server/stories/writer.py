"""Writing stories: post, share to story, change audience, delete, expire.

Posting costs O(1) Redis work whatever the follower count (fan-out on read):
one INCR for the seq, one Lua script (record + index + publish, on the owner's
slot), one ZADD to the item's expiry schedule bucket and one to the owner's
active-owners bucket (`core/keys.py`), the three in one pipeline. Files are moved into storage before the script runs and
removed again if it fails, so a rejected post leaves no file, key or event.

Shares (`server/stories/shares.py`): a share has no files (its media is its source's),
expires no later than its source, and is listed in the source's share index
(`st:{source owner}:shares:<seq>`, on the source owner's slot) before it is
posted. Ending a source ends its shares through that index (`end`), each by
the same one-slot script on the sharer's slot; a narrowed or widened source
tells each share's channel (`set_audience`), and reads filter on the source's
rules anyway. So no script ever touches two owners' slots, and sharing costs
O(1) more Redis work (SADD + re-check), still nothing per follower.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from server.core import events
from server.core.errors import Forbidden, NotFound
from server.core.items import ItemRecord, Json, render
from server.core.keys import item_id, split_item_id
from server.store.scripts import Batch
from server.store.store import Store
from server.stories.shares import Source, load_sources

if TYPE_CHECKING:
    from server.media.pipeline import ProcessedMedia


UPLOAD_GRACE_MS = 3600 * 1000  # a post still not published this long after its upload failed


def _file_keys(owner: str, seq: int, ext: str) -> tuple[str, str]:
    """Storage keys of an item's media file and poster: `media/<owner>/<seq>-<random>…`."""
    stem = f"media/{owner}/{seq}-{secrets.token_hex(4)}"
    return f"{stem}.{ext}", f"{stem}-poster.jpg"


@dataclass(frozen=True)
class Posted:
    """A new item: its stored `record`, and `item`, the StoryItem its owner sees.

    `item` is rendered once, for the `story.new` event, and given back to the
    poster with the owner's fields (`seen` true, `view_count` 0): the HTTP answer
    and `capture.finished` need no second render.
    """

    record: ItemRecord
    item: Json


class StoryWriter:
    """Create and end items. Every method raises NotFound for invisible items."""

    def __init__(self, store: Store) -> None:
        self.s = store

    async def _next_seq(self, owner: str) -> int:
        return int(await self.s.redis.incr(self.s.keys.seq(owner)))

    def _archive_until(self, ended_ms: int) -> int:
        return ended_ms + self.s.settings.archive_retention_s * 1000

    async def create(
        self,
        owner: Json,
        media: ProcessedMedia,
        *,
        caption: str | None,
        audience: str,
        lifetime_h: int,
        source: str,
        created_ms: int | None = None,
    ) -> Posted:
        """Store `media` (files are moved) and publish a new item (`Posted`).

        Before any file is stored the item is put in the media-gc schedule,
        `UPLOAD_GRACE_MS` ahead: if the post never completes (an object store that
        took the bytes after the request gave up, a process killed mid-upload),
        the sweeper finds no record then and removes the files by their name. A
        published post takes itself out of the schedule in its own pipeline.
        """
        seq = await self._next_seq(owner["id"])
        media_key, poster_key = _file_keys(owner["id"], seq, media.ext)
        pending = item_id(owner["id"], seq)
        await self.s.redis.zadd(
            self.s.keys.media_gc_schedule_of(pending),
            {pending: self.s.clock.now_ms() + UPLOAD_GRACE_MS},
        )
        await self.s.storage.put(media.path, media_key, media.mime)
        try:
            await self.s.storage.put(media.poster_path, poster_key, "image/jpeg")
        except BaseException:
            await self.s.storage.delete([media_key])
            raise
        now = self.s.clock.now_ms() if created_ms is None else created_ms
        rec = ItemRecord(
            owner=owner["id"], seq=seq, source=source, kind=media.kind, mime=media.mime,
            width=media.width, height=media.height, duration_ms=media.duration_ms,
            media_key=media_key, poster_key=poster_key, caption=caption, audience=audience,
            created_ms=now, expires_ms=now + self.s.lifetime_ms(lifetime_h),
        )  # fmt: skip
        return await self._publish_or_remove(owner, rec)

    async def _publish_or_remove(self, owner: Json, rec: ItemRecord) -> Posted:
        """Publish `rec`; if that fails, delete its files so nothing half-written stays."""
        try:
            return await self._publish_new(owner, rec)
        except BaseException:
            await self.s.storage.delete([rec.media_key, rec.poster_key])
            raise

    async def _publish_new(
        self,
        owner: Json,
        rec: ItemRecord,
        shared: Json | None = None,
        source: Source | None = None,
    ) -> Posted:
        """Index `rec` and publish story.new in one script; returns it as its owner sees it."""
        item = render(rec, owner, self.s.signer, seen=False, view_count=None, shared_from=shared)
        event = events.story_new(
            rec.owner, rec.seq, rec.audience, rec.created_ms, rec.expires_ms, item,
            source.as_json() if source else None,
        )  # fmt: skip
        fields = [part for kv in rec.to_hash().items() for part in kv]
        k = self.s.keys
        batch = Batch(self.s.redis)
        batch.script(
            self.s.scripts.post_item,
            [k.item(rec.owner, rec.seq), k.items(rec.owner)],
            [
                rec.member,
                rec.expires_ms,
                self._archive_until(rec.expires_ms),
                *self.s.bus.lifecycle_args(rec.owner, event),
                *fields,
            ],
        )
        batch.pipe.zadd(k.expiry_schedule_of(rec.id), {rec.id: rec.expires_ms})
        batch.pipe.zadd(k.active_owners_of(rec.owner), {rec.owner: rec.expires_ms}, gt=True)
        if rec.media_key:  # posted: no longer an upload the sweeper may have to clean up
            batch.pipe.zrem(k.media_gc_schedule_of(rec.id), rec.id)
        await batch.execute()
        return Posted(rec, {**item, "seen": True, "view_count": 0})

    async def share(
        self,
        owner: Json,
        original: ItemRecord,
        source: Source,
        *,
        caption: str | None,
        audience: str,
        lifetime_h: int,
    ) -> Posted:
        """Re-post `original` to `owner`'s story with attribution (the share, `Posted`).

        `original` and its root `source` were checked live and visible to `owner`.
        The share has no files of its own and expires no later than `source`. It is
        indexed under the source before it is posted and the source is read again
        after, so a source that ended or changed audience meanwhile is caught
        either by `end()` / `set_audience()` or here.
        """
        seq = await self._next_seq(owner["id"])
        now = self.s.clock.now_ms()
        rec = replace(
            original, owner=owner["id"], seq=seq, source="share", media_key="", poster_key="",
            caption=caption, audience=audience, created_ms=now,
            expires_ms=min(now + self.s.lifetime_ms(lifetime_h), source.expires_ms),
            status="active", ended_ms=None, shared_from=source.id,
        )  # fmt: skip
        index = self.s.keys.shares(source.owner, source.seq)
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.sadd(index, rec.id)
        pipe.pexpireat(index, self._archive_until(source.expires_ms))
        await pipe.execute()
        root_owner = await self.s.users.get(source.owner) or {"id": source.owner}
        posted = await self._publish_new(
            owner, rec, {"item_id": source.id, "owner": root_owner}, source
        )
        now_source = (await load_sources(self.s, [source.id])).get(source.id)
        if now_source is None or not now_source.is_live(self.s.clock.now_ms()):
            reason = now_source.end_reason(now) if now_source else "deleted"
            await self.end(rec, reason, self.s.clock.now_ms(), source=now_source or source)
        elif now_source.audience != source.audience:
            await self._tell_shares([rec.id], now_source, source.audience)
        return posted

    async def end(
        self, rec: ItemRecord, reason: str, now_ms: int, source: Source | None = None
    ) -> bool:
        """Expire or delete `rec`: unindex, archive, publish story.removed. Idempotent.

        Ends `rec`'s shares too, with the same reason. They are first made due in the
        expiry schedule, so if this process dies half-way the sweeper ends the rest.
        `source` (for a share: its source, when the caller has it) goes in the event.
        """
        k = self.s.keys
        known = await self.s.redis.smembers(k.shares(rec.owner, rec.seq))
        if known:
            await self._make_due({m.decode() for m in known}, now_ms)
        if rec.shared_from and source is None:
            source = (await load_sources(self.s, [rec.shared_from])).get(rec.shared_from)
        event = events.story_removed(rec.owner, rec.seq, rec.audience, reason,
                                     source.as_json() if source else None)  # fmt: skip
        ended = await self.s.scripts.end_item(
            keys=[k.item(rec.owner, rec.seq), k.items(rec.owner), k.archive(rec.owner),
                  k.shares(rec.owner, rec.seq)],
            args=[reason, now_ms, self._archive_until(now_ms),
                  *self.s.bus.lifecycle_args(rec.owner, event)],
        )  # fmt: skip
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.zrem(k.expiry_schedule_of(rec.id), rec.id)
        pipe.zadd(k.media_gc_schedule_of(rec.id), {rec.id: self._archive_until(now_ms)}, nx=True)
        retention = now_ms + self.s.settings.viewers_retention_s * 1000
        for key in (k.views(rec.owner, rec.seq), k.reactions(rec.owner, rec.seq)):
            pipe.pexpireat(key, retention)
        await pipe.execute()
        if not ended:
            return False
        for share_id in sorted({m.decode() for m in ended[1]} | {m.decode() for m in known}):
            share = await self._record(share_id)
            if share is not None and share.status == "active":
                await self.end(share, reason, now_ms, source=Source.of(rec))
        return True

    async def _make_due(self, item_ids: set[str], due_ms: int) -> None:
        """Move `item_ids` forward to `due_ms` in their expiry schedule buckets (ZADD LT)."""
        by_bucket: dict[str, dict[str, int]] = {}
        for text_id in sorted(item_ids):
            by_bucket.setdefault(self.s.keys.expiry_schedule_of(text_id), {})[text_id] = due_ms
        pipe = self.s.redis.pipeline(transaction=False)
        for key, members in by_bucket.items():
            pipe.zadd(key, members, lt=True)
        await pipe.execute()

    async def _record(self, text_id: str) -> ItemRecord | None:
        parsed = split_item_id(text_id)
        raw = await self.s.redis.hgetall(self.s.keys.item(*parsed)) if parsed else {}
        return ItemRecord.from_hash(raw)

    async def _tell_shares(self, share_ids: list[str], source: Source, old_audience: str) -> None:
        """Publish story.source_audience on each share's owner's channels (followers' and own)."""
        pipe = self.s.redis.pipeline(transaction=False)
        for share_id in share_ids:
            parsed = split_item_id(share_id)
            if parsed:
                event = events.story_source_audience(*parsed, source.as_json(), old_audience)
                self.s.bus.lifecycle(pipe, parsed[0], event)
        await pipe.execute()

    async def delete(self, caller: str, rec: ItemRecord) -> None:
        """Owner-only delete. Raises Forbidden (403) for someone else's visible item."""
        if rec.owner != caller:
            raise Forbidden("only the owner can delete a story item")
        await self.end(rec, "deleted", self.s.clock.now_ms())

    async def set_audience(self, caller: str, rec: ItemRecord, audience: str) -> ItemRecord:
        """Owner-only audience change; publishes story.audience. Raises Forbidden/NotFound."""
        if rec.owner != caller:
            raise Forbidden("only the owner can change a story item")
        k = self.s.keys
        new = replace(rec, audience=audience)
        event = events.story_audience(rec.owner, rec.seq, rec.audience, audience)
        old = await self.s.scripts.set_audience(
            keys=[k.item(rec.owner, rec.seq), k.items(rec.owner)],
            args=[
                audience,
                new.member,
                *self.s.bus.lifecycle_args(rec.owner, event),
            ],
        )
        if old is None:
            raise NotFound(f"no story item {item_id(rec.owner, rec.seq)}")
        old_audience = old.decode() if isinstance(old, bytes) else str(old)
        if old_audience != audience:  # read after the change: a share indexed later re-checks
            shares = await self.s.redis.smembers(k.shares(rec.owner, rec.seq))
            if shares:
                await self._tell_shares(
                    sorted(m.decode() for m in shares), Source.of(new), old_audience
                )
        return new
