"""Seen, seen-by lists, reactions and replies.

A `seen` for item N says "N was shown to me". It does two different things:
- Read pointer (seen-up-to): item N and every earlier item of the same owner
  count as seen for the viewer's ring, on all their devices. One number per
  owner (`seen:{viewer}` hash, raised atomically by `seen_max.lua`; the
  max-read-id model).
- View: the viewer joins the seen-by list of item N only — not of the earlier
  items they skipped or opened the ring past. One ZSET per item
  (`views:{owner}:<seq>`, viewer → seen_at ms): ZADD NX makes repeated seen
  calls idempotent, ZCARD is the view count, and `story.viewed` goes to the
  owner only when the ZADD added someone.
The owner never counts as a viewer of their own items.
"""

from __future__ import annotations

import unicodedata

import orjson

from server.core import events, parse
from server.core.clock import rfc3339
from server.core.errors import Forbidden, NotFound, field_error
from server.core.items import ItemRecord, Json
from server.store.scripts import Batch
from server.store.store import Store
from server.stories.reader import StoryReader

MAX_EMOJI_CHARS = 16
MAX_REPLIES_KEPT = 1000


ZWJ, KEYCAP = "\u200d", "\u20e3"
MODIFIERS = frozenset("\ufe0e\ufe0f" + KEYCAP) | {chr(c) for c in range(0x1F3FB, 0x1F400)}
TAGS = range(0xE0020, 0xE0080)  # subdivision flags: black flag + tag letters + cancel tag
REGIONAL = range(0x1F1E6, 0x1F200)  # two of them make a country flag
KEYCAP_BASES = frozenset("0123456789#*")


def emoji_count(text: str) -> int | None:
    """How many emoji `text` is, by the shapes of Unicode TS #51 sequences; None if not emoji.

    An emoji is a pictograph (category So) or a keycap base (`0-9 # *`, which
    needs U+20E3 after it), then any modifiers (variation selectors, skin tones,
    the keycap mark, tag characters); ZWJ joins the next one into the same emoji
    (a family, a profession), and two regional indicators make one flag. A
    simplification of the spec's grammar: it accepts some sequences no vendor
    draws, and refuses text, spaces, controls and stray joiners.
    """
    count, joined, keycap_open = 0, False, False
    regional_open = False
    for ch in text:
        code = ord(ch)
        if ch == ZWJ:
            if count == 0 or joined or keycap_open:
                return None
            joined = True
        elif ch in MODIFIERS or code in TAGS:
            if count == 0 or joined:
                return None
            if ch == KEYCAP:
                keycap_open = False
        elif code in REGIONAL:
            if regional_open and not joined:
                regional_open = False  # the second of a flag's pair
            else:
                count += 0 if joined else 1
                regional_open, joined = True, False
        elif unicodedata.category(ch) == "So" or ch in KEYCAP_BASES:
            if keycap_open:
                return None
            count += 0 if joined else 1
            joined, regional_open = False, False
            keycap_open = ch in KEYCAP_BASES
        else:
            return None
    return None if joined or keycap_open or count == 0 else count


def check_emoji(raw: object) -> str:
    """A reaction: exactly one emoji (`emoji_count`), at most 16 code points. Raises 422."""
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_EMOJI_CHARS:
        raise field_error("emoji", f"1-{MAX_EMOJI_CHARS} characters")
    count = emoji_count(raw)
    if count is None:
        raise field_error("emoji", "must be emoji, not text")
    if count != 1:
        raise field_error("emoji", "one emoji per reaction")
    return raw


class SeenBook:
    """Seen marks, seen-by lists, reactions and replies, with their events."""

    def __init__(self, store: Store, reader: StoryReader) -> None:
        self.s = store
        self.reader = reader

    async def mark_seen(self, viewer: Json, text_id: str) -> None:
        """The viewer was shown `text_id`: record the view and move the read pointer to it.

        The read pointer (seen-up-to) rises to the item, so it and every
        earlier item of the owner count as seen for rings, on every device of
        the viewer (`seen.sync` when it moved). The view — the seen-by entry,
        the view count, `story.viewed` to the owner — is recorded for this item
        only: only it was shown. Idempotent. One round trip after the
        visibility check, one more to publish what changed.

        Raises NotFound when the viewer may not see the item.
        """
        rec = await self.reader.visible(viewer["id"], text_id)
        if rec.owner == viewer["id"]:
            return
        k = self.s.keys
        now = self.s.clock.now_ms()
        views = k.views(rec.owner, rec.seq)
        batch = Batch(self.s.redis)
        batch.script(self.s.scripts.seen_max, [k.seen(viewer["id"])], [rec.owner, rec.seq])
        batch.pipe.zadd(views, {viewer["id"]: now}, nx=True)
        batch.pipe.pexpireat(views, rec.expires_ms + self.s.settings.viewers_retention_s * 1000)
        batch.pipe.zcard(views)
        prev, added, _, count = await batch.execute()
        pipe = self.s.redis.pipeline(transaction=False)
        if added:
            self.s.bus.personal(
                pipe, rec.owner, events.story_viewed(rec.id, viewer, rfc3339(now), count)
            )
        if int(prev) < rec.seq:
            self.s.bus.personal(pipe, viewer["id"], events.seen_sync(rec.owner, rec.seq))
        if len(pipe):
            await pipe.execute()

    async def _owned(self, caller: str, text_id: str, what: str) -> ItemRecord:
        """The caller's own item in any status (archive included). 404 / 403 otherwise;
        `what` names what only the owner may see, for the 403."""
        rec = await self.reader.record(text_id)
        if rec is None:
            raise NotFound(f"no story item {text_id}")
        if rec.owner != caller:
            await self.reader.visible(caller, text_id)  # 404 when not even visible
            raise Forbidden(f"only the owner can see {what} of a story item")
        if rec.shared_from and not await self.reader.shown(caller, [rec]):
            raise NotFound(f"no story item {text_id}")  # a share ends with its source
        return rec

    async def viewers(self, caller: str, text_id: str, cursor: str | None, limit: int) -> Json:
        """`{"count", "items": [{"user", "seen_at", "reaction"}], "next_cursor"}`, newest first.

        The cursor is `"<seen_at ms>:<viewer id>"` of the last entry returned, so
        pages stay stable while new viewers arrive.
        """
        rec = await self._owned(caller, text_id, "who viewed")
        k = self.s.keys
        views = k.views(rec.owner, rec.seq)
        top, skip_through = "+inf", None
        if cursor:
            skip_through = parse.score_cursor(cursor)
            if skip_through is None:
                raise field_error("cursor", "not a cursor this endpoint issued")
            top = str(skip_through[0])
        raw = await self.s.redis.zrevrangebyscore(
            views, top, "-inf", start=0, num=limit + 64, withscores=True
        )
        rows = [(m.decode(), int(s)) for m, s in raw]
        if skip_through:
            rows = [r for r in rows if (r[1], r[0]) < skip_through]
        page, more = rows[:limit], len(rows) > limit
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.zcard(views)
        pipe.hmget(k.reactions(rec.owner, rec.seq), [m for m, _ in page] or ["-"])
        count, reactions = await pipe.execute()
        users = await self.s.users.many([m for m, _ in page])
        items = [
            {
                "user": users.get(m) or {"id": m},
                "seen_at": rfc3339(ts),
                "reaction": reactions[n].decode() if page and reactions[n] else None,
            }
            for n, (m, ts) in enumerate(page)
        ]
        next_cursor = f"{page[-1][1]}:{page[-1][0]}" if more and page else None
        return {"count": count, "items": items, "next_cursor": next_cursor}

    async def react(self, user: Json, text_id: str, emoji: str) -> None:
        """Store the caller's reaction (latest wins) and tell the owner."""
        rec = await self.reader.visible(user["id"], text_id)
        k = self.s.keys
        key = k.reactions(rec.owner, rec.seq)
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.hset(key, user["id"], emoji)
        pipe.pexpireat(key, rec.expires_ms + self.s.settings.viewers_retention_s * 1000)
        self.s.bus.personal(pipe, rec.owner, events.story_reaction(rec.id, user, emoji))
        await pipe.execute()

    async def reply(self, user: Json, text_id: str, text: str) -> Json:
        """Deliver a reply to the owner; returns `{"item_id", "user", "text", "created_at"}`."""
        rec = await self.reader.visible(user["id"], text_id)
        k = self.s.keys
        reply = {
            "item_id": rec.id,
            "user": user,
            "text": text,
            "created_at": rfc3339(self.s.clock.now_ms()),
        }
        key = k.replies(rec.owner, rec.seq)
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.rpush(key, orjson.dumps(reply))
        pipe.ltrim(key, -MAX_REPLIES_KEPT, -1)
        pipe.pexpireat(key, rec.expires_ms + self.s.settings.archive_retention_s * 1000)
        self.s.bus.personal(pipe, rec.owner, events.story_reply(rec.id, user, text))
        await pipe.execute()
        return reply

    async def replies(self, caller: str, text_id: str) -> list[Json]:
        """The replies to the caller's own item, oldest first (at most 1000)."""
        rec = await self._owned(caller, text_id, "the replies")
        raw = await self.s.redis.lrange(self.s.keys.replies(rec.owner, rec.seq), 0, -1)
        return [orjson.loads(r) for r in raw]
