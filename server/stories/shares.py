"""Shares: a share never outlives or widens its source.

A share is an item of the sharer's that points at a source (`shared_from`, always
the root item: a share of a share points at the original). The rule
(docs/protocol.md, "Shares"): viewer V sees a share only while
- the share passes the sharer's rules for V (hidden, audience), and
- the source is live: status `active` and not expired (any other status, such
  as deleted or a future "taken down", ends it), and
- the source passes the source owner's rules for V (hidden, audience).
A share has no media of its own: it shows the source's files while both are live.

`Source` is what that rule needs to know about a source; it travels in events
(`as_json`) so the push layer can apply the rule without Redis. The loaders at
the bottom read sources and relations for many ids in one round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.core.audience import Relation, can_see
from server.core.keys import split_item_id

if TYPE_CHECKING:
    from server.core.items import ItemRecord
    from server.store.store import Store

SOURCE_FIELDS = ("owner", "audience", "status", "expires_ms")


@dataclass(frozen=True, slots=True)
class Source:
    """A share's source item as far as visibility goes. Times in epoch ms."""

    id: str
    owner: str
    audience: str
    status: str
    expires_ms: int

    @property
    def seq(self) -> int:
        """The source's seq within its owner's story (from its id)."""
        parsed = split_item_id(self.id)
        return parsed[1] if parsed else 0

    def is_live(self, now_ms: int) -> bool:
        """Status `active` and not expired: every other status ends the source's shares."""
        return self.status == "active" and self.expires_ms > now_ms

    def visible_to(self, relation: Relation, now_ms: int) -> bool:
        """Live, and a viewer in `relation` to the source's owner may see its audience."""
        return self.is_live(now_ms) and can_see(relation, self.audience)

    def end_reason(self, now_ms: int) -> str:
        """The `story.removed` reason its shares get once it is not live: expired | deleted."""
        expired = self.status == "expired" or (
            self.status == "active" and self.expires_ms <= now_ms
        )
        return "expired" if expired else "deleted"

    @classmethod
    def of(cls, rec: ItemRecord) -> Source:
        return cls(rec.id, rec.owner, rec.audience, rec.status, rec.expires_ms)

    def as_json(self) -> dict[str, Any]:
        """`{"id", "owner_id", "audience", "status", "expires_ms"}` for event payloads."""
        return {
            "id": self.id,
            "owner_id": self.owner,
            "audience": self.audience,
            "status": self.status,
            "expires_ms": self.expires_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Source:
        """Inverse of `as_json`. Raises KeyError for a payload without those fields."""
        return cls(raw["id"], raw["owner_id"], raw["audience"], raw["status"], raw["expires_ms"])

    @classmethod
    def from_fields(cls, text_id: str, values: list[bytes | None]) -> Source | None:
        """From `HMGET <item> owner audience status expires_ms`; None for a missing item."""
        owner, audience, status, expires = (v.decode() if v else None for v in values)
        if not owner or not audience or not expires:
            return None
        return cls(text_id, owner, audience, status or "active", int(expires))


def share_visible(source: Source | None, relation: Relation, now_ms: int) -> bool:
    """The source half of the rule: a share with an unknown source is never visible."""
    return source is not None and source.visible_to(relation, now_ms)


def _parsed(ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """`{id: (owner, seq)}` for the well-formed ids among `ids`, sorted by id."""
    out = {}
    for text_id in sorted(set(ids)):
        parsed = split_item_id(text_id)
        if parsed:
            out[text_id] = parsed
    return out


async def load_sources(store: Store, ids: Iterable[str]) -> dict[str, Source]:
    """The stored sources among `ids`, in any status, in one round trip (missing ones left out)."""
    wanted = _parsed(ids)
    if not wanted:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for owner, seq in wanted.values():
        pipe.hmget(store.keys.item(owner, seq), SOURCE_FIELDS)
    found = (Source.from_fields(i, v) for i, v in zip(wanted, await pipe.execute(), strict=True))
    return {s.id: s for s in found if s is not None}


async def visible_sources(store: Store, viewer: str, ids: Iterable[str]) -> dict[str, Source]:
    """The sources among `ids` that are live and that `viewer` may see, in one round trip.

    Reads each source's record and the viewer's relation to each source owner
    (followed, close friend, hidden) in one pipeline.
    """
    wanted = _parsed(ids)
    if not wanted:
        return {}
    owners = sorted({owner for owner, _ in wanted.values()} - {viewer})
    k = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for owner, seq in wanted.values():
        pipe.hmget(k.item(owner, seq), SOURCE_FIELDS)
    for owner in owners:
        pipe.zscore(k.following(viewer), owner)
        pipe.sismember(k.close_friends(owner), viewer)
        pipe.sismember(k.hidden(owner), viewer)
    replies = await pipe.execute()
    relations = {viewer: Relation(is_owner=True)}
    for n, owner in enumerate(owners):
        follows, cf, hidden = replies[len(wanted) + 3 * n : len(wanted) + 3 * n + 3]
        relations[owner] = Relation(
            follows=follows is not None, close_friend=bool(cf), hidden=bool(hidden)
        )
    now = store.clock.now_ms()
    out = {}
    for text_id, values in zip(wanted, replies[: len(wanted)], strict=True):
        source = Source.from_fields(text_id, values)
        relation = relations.get(source.owner) if source else None
        if source is not None and relation is not None and share_visible(source, relation, now):
            out[text_id] = source
    return out
