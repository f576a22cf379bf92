"""The story tray and the seen-up-to rule, as plain functions over data.

Each owner's active items are `ActiveItem`s; a viewer's seen state is one number
per owner: the highest item seq seen ("max read id"). An item is unseen when its
seq is above that number.

Tray order (PROTOCOL.md): the caller's own entry first (if it has active items),
then owners with unseen items by `latest_at` descending, then fully seen owners
by `latest_at` descending. Ties break by owner id, so the order is total.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from server.core.audience import CODE_AUDIENCES, Relation, can_see


@dataclass(frozen=True)
class ActiveItem:
    """One active item as stored in an owner's items index: seq, audience, times in ms.

    `source` is the id of the item a share points at (None for everything else):
    a share is visible only where its source is (`server/shares.py`).
    """

    seq: int
    audience: str
    created_ms: int
    expires_ms: int
    source: str | None = None

    def member(self) -> str:
        """The ZSET member: `"<seq>|<audience code>|<created_ms>"`, plus `"|<source id>"`
        for a share (item ids never hold a `|`)."""
        from server.core.audience import AUDIENCE_CODES

        base = f"{self.seq}|{AUDIENCE_CODES[self.audience]}|{self.created_ms}"
        return f"{base}|{self.source}" if self.source else base

    @classmethod
    def parse(cls, member: str | bytes, expires_ms: float) -> ActiveItem:
        """Inverse of `member()`; `expires_ms` is the ZSET score."""
        text = member.decode() if isinstance(member, bytes) else member
        seq, code, created, *source = text.split("|", 3)
        return cls(
            int(seq),
            CODE_AUDIENCES[code],
            int(created),
            int(expires_ms),
            source[0] if source else None,
        )


@dataclass(frozen=True)
class TrayState:
    """One owner's ring for one viewer, before the owner's User is attached."""

    owner_id: str
    has_unseen: bool
    item_count: int
    latest_ms: int
    first_unseen_seq: int | None


def visible_items(items: Iterable[ActiveItem], relation: Relation, now_ms: int) -> list[ActiveItem]:
    """Items the viewer may see and that have not expired at `now_ms`, oldest first."""
    keep = [i for i in items if i.expires_ms > now_ms and can_see(relation, i.audience)]
    return sorted(keep, key=lambda i: i.seq)


def ring(owner_id: str, items: list[ActiveItem], seen_seq: int, *, own: bool) -> TrayState | None:
    """The ring for visible `items` (oldest first) given the viewer's seen-up-to seq.

    The caller's own ring never shows unseen. None when there is nothing to show.
    """
    if not items:
        return None
    unseen = [] if own else [i for i in items if i.seq > seen_seq]
    return TrayState(
        owner_id=owner_id,
        has_unseen=bool(unseen),
        item_count=len(items),
        latest_ms=max(i.created_ms for i in items),
        first_unseen_seq=unseen[0].seq if unseen else None,
    )


def merge_ring(
    owner_id: str, base: TrayState | None, extra: list[ActiveItem], seen_seq: int, *, own: bool
) -> TrayState | None:
    """`base` (the ring over some visible items) with more visible `extra` items added.

    Equals `ring()` over both sets together: counts add up, `latest` and the
    first unseen seq are a max and a min. The tray uses it to add the shares whose
    sources it checked after `tray_scan.lua` computed the rest of the ring.
    """
    more = ring(owner_id, sorted(extra, key=lambda i: i.seq), seen_seq, own=own)
    if base is None or more is None:
        return base or more
    firsts = [s for s in (base.first_unseen_seq, more.first_unseen_seq) if s is not None]
    return TrayState(
        owner_id=owner_id,
        has_unseen=base.has_unseen or more.has_unseen,
        item_count=base.item_count + more.item_count,
        latest_ms=max(base.latest_ms, more.latest_ms),
        first_unseen_seq=min(firsts) if firsts else None,
    )


def order_tray(viewer_id: str, rings: Iterable[TrayState]) -> list[TrayState]:
    """Sort rings in tray order (see module docstring)."""

    def key(r: TrayState) -> tuple[int, int, str]:
        group = 0 if r.owner_id == viewer_id else (1 if r.has_unseen else 2)
        return (group, -r.latest_ms, r.owner_id)

    return sorted(rings, key=key)


def first_unseen(items: list[ActiveItem], seen_seq: int) -> int | None:
    """Seq of the oldest visible item above `seen_seq`, or None."""
    for item in items:
        if item.seq > seen_seq:
            return item.seq
    return None
