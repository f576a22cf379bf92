"""The hub's per-owner cache: an owner's active items, User, and the sources of their shares.

The hub computes tray entries from it instead of Redis (`hub.py`), so it must
apply the share rule of `server/stories/shares.py` too: `sources` keeps the `Source` of each
cached share (from the story.new event, or read once when the owner is loaded),
updated by story.source_audience events and dropped with the last share of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from server.core.audience import Relation
from server.core.tray import ActiveItem
from server.stories.shares import Source, share_visible

if TYPE_CHECKING:
    from server.push.connection import Connection

SourceViews = tuple[tuple[str, Relation], ...]  # (source owner, the viewer's relation to them)


@dataclass(slots=True)
class OwnerCache:
    """An owner's active items (seq → item) and User, for local tray computation.

    `removed` holds seqs deleted or expired since the cache was filled (rare, so
    a frozenset that is replaced on change: most caches share the empty one).
    """

    user: dict[str, Any]
    items: dict[int, ActiveItem] = field(default_factory=dict)
    removed: frozenset[int] = frozenset()
    sources: dict[str, Source] | None = None  # source id → Source of the owner's shares

    def source_owners(self, extra: Source | None = None) -> tuple[str, ...]:
        """Owners of the sources of this owner's shares (and `extra`'s), sorted: what a
        viewer's view of this ring depends on beyond their relation to the owner."""
        owners = {s.owner for s in self.sources.values()} if self.sources else set()
        if extra is not None:
            owners.add(extra.owner)
        return tuple(sorted(owners))

    def remember(self, source: Source) -> None:
        if self.sources is None:
            self.sources = {}
        self.sources[source.id] = source

    def source_changed(
        self, source_id: str, audience: str | None = None, status: str | None = None
    ) -> None:
        """An item of this owner's that their own shares point at changed audience or
        ended: the event about the item itself updates those shares' source at once."""
        old = self.sources.get(source_id) if self.sources else None
        if self.sources and old:
            self.sources[source_id] = replace(
                old, audience=audience or old.audience, status=status or old.status
            )

    def forget_unused(self) -> None:
        """Drop sources no cached share points at any more."""
        if self.sources:
            used = {i.source for i in self.items.values() if i.source}
            self.sources = {k: v for k, v in self.sources.items() if k in used} or None

    def shown(self, item: ActiveItem, views: SourceViews, now_ms: int) -> bool:
        """Whether a viewer with `views` of the source owners may see `item` as far as its
        source goes (always for an item that is not a share)."""
        if not item.source:
            return True
        source = self.sources.get(item.source) if self.sources else None
        relation = dict(views).get(source.owner) if source else None
        return relation is not None and share_visible(source, relation, now_ms)


def rings_sharing_from(owners: dict[str, OwnerCache], conn: Connection, other: str) -> list[str]:
    """Owners in `conn`'s tray whose cached shares have sources owned by `other`: the
    rings that change when `conn`'s relation to `other` does (follow, close friend, hide)."""
    out = []
    for owner in (conn.user_id, *conn.following):
        oc = owners.get(owner)
        if owner != other and oc and oc.sources and conn.in_tray(owner):
            if any(s.owner == other for s in oc.sources.values()):
                out.append(owner)
    return out
