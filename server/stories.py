"""Writing stories: post, share to story, change audience, delete, expire.

Posting costs O(1) Redis work whatever the follower count (fan-out on read):
one INCR for the seq, one Lua script (record + index + publish), one ZADD to
the expiry schedule. Files are moved into storage before the script runs and
removed again if it fails, so a rejected post leaves no file, key or event.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import TYPE_CHECKING

from server import events
from server.errors import Forbidden, NotFound
from server.items import ItemRecord, Json, render
from server.keys import item_id, split_item_id
from server.storage import link_or_copy
from server.store import Store

if TYPE_CHECKING:
    from server.media import ProcessedMedia


def _file_keys(owner: str, seq: int, ext: str) -> tuple[str, str]:
    """Storage keys of an item's media file and poster: `media/<owner>/<seq>-<random>…`."""
    stem = f"media/{owner}/{seq}-{secrets.token_hex(4)}"
    return f"{stem}.{ext}", f"{stem}-poster.jpg"


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
    ) -> ItemRecord:
        """Store `media` (files are moved) and publish a new item; returns its record."""
        seq = await self._next_seq(owner["id"])
        media_key, poster_key = _file_keys(owner["id"], seq, media.ext)
        self.s.storage.put(media.path, media_key)
        self.s.storage.put(media.poster_path, poster_key)
        now = self.s.clock.now_ms() if created_ms is None else created_ms
        rec = ItemRecord(
            owner=owner["id"], seq=seq, source=source, kind=media.kind, mime=media.mime,
            width=media.width, height=media.height, duration_ms=media.duration_ms,
            media_key=media_key, poster_key=poster_key, caption=caption, audience=audience,
            created_ms=now, expires_ms=now + self.s.lifetime_ms(lifetime_h),
        )  # fmt: skip
        await self._publish_or_remove(owner, rec)
        return rec

    async def _publish_or_remove(
        self, owner: Json, rec: ItemRecord, shared: Json | None = None
    ) -> None:
        """Publish `rec`; if that fails, delete its files so nothing half-written stays."""
        try:
            await self._publish_new(owner, rec, shared)
        except BaseException:
            self.s.storage.delete(rec.media_key)
            self.s.storage.delete(rec.poster_key)
            raise

    async def _publish_new(self, owner: Json, rec: ItemRecord, shared: Json | None = None) -> None:
        item = render(rec, owner, self.s.signer, seen=False, view_count=None, shared_from=shared)
        event = events.story_new(
            rec.owner, rec.seq, rec.audience, rec.created_ms, rec.expires_ms, item
        )
        fields = [part for kv in rec.to_hash().items() for part in kv]
        k = self.s.keys
        pipe = self.s.redis.pipeline(transaction=False)
        await self.s.scripts.post_item(
            keys=[k.item(rec.owner, rec.seq), k.items(rec.owner)],
            args=[
                rec.member,
                rec.expires_ms,
                self._archive_until(rec.expires_ms),
                k.stories_channel(rec.owner),
                events.encode(event),
                k.inbox_channel(rec.owner),
                *fields,
            ],
            client=pipe,
        )
        pipe.zadd(k.expiry_schedule(), {rec.id: rec.expires_ms})
        pipe.zadd(k.active_owners(), {rec.owner: rec.expires_ms}, gt=True)
        await pipe.execute()

    async def share(
        self,
        owner: Json,
        original: ItemRecord,
        *,
        caption: str | None,
        audience: str,
        lifetime_h: int,
    ) -> ItemRecord:
        """Re-post `original` (already checked visible) to `owner`'s story with attribution."""
        root = original.shared_from or original.id
        seq = await self._next_seq(owner["id"])
        media_key, poster_key = _file_keys(owner["id"], seq, original.media_key.rsplit(".", 1)[-1])
        link_or_copy(self.s.storage, original.media_key, media_key)
        link_or_copy(self.s.storage, original.poster_key, poster_key)
        now = self.s.clock.now_ms()
        rec = replace(
            original, owner=owner["id"], seq=seq, source="share", media_key=media_key,
            poster_key=poster_key, caption=caption, audience=audience, created_ms=now,
            expires_ms=now + self.s.lifetime_ms(lifetime_h), status="active",
            ended_ms=None, shared_from=root,
        )  # fmt: skip
        root_owner_id = (split_item_id(root) or (original.owner, 0))[0]
        root_owner = await self.s.users.get(root_owner_id)
        await self._publish_or_remove(owner, rec, {"item_id": root, "owner": root_owner})
        return rec

    async def end(self, rec: ItemRecord, reason: str, now_ms: int) -> bool:
        """Expire or delete `rec`: unindex, archive, publish story.removed. Idempotent."""
        k = self.s.keys
        event = events.story_removed(rec.owner, rec.seq, rec.audience, reason)
        ended = await self.s.scripts.end_item(
            keys=[k.item(rec.owner, rec.seq), k.items(rec.owner), k.archive(rec.owner)],
            args=[reason, now_ms, self._archive_until(now_ms), k.stories_channel(rec.owner),
                  events.encode(event), k.inbox_channel(rec.owner)],
        )  # fmt: skip
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.zrem(k.expiry_schedule(), rec.id)
        pipe.zadd(k.media_gc_schedule(), {rec.id: self._archive_until(now_ms)}, nx=True)
        retention = now_ms + self.s.settings.viewers_retention_s * 1000
        for key in (k.views(rec.owner, rec.seq), k.reactions(rec.owner, rec.seq)):
            pipe.pexpireat(key, retention)
        await pipe.execute()
        return bool(ended)

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
                k.stories_channel(rec.owner),
                events.encode(event),
                k.inbox_channel(rec.owner),
            ],
        )
        if old is None:
            raise NotFound(f"no story item {item_id(rec.owner, rec.seq)}")
        return new
