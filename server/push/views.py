"""How one viewer sees one owner's ring, and the tray frames computed from it.

A `View` is everything a frame about an owner depends on for one viewer: is
owner, follows, close friend, hidden, seen-up-to, and the viewer's relation to
the owners of the sources of the owner's shares. The fan-out computes and
encodes each distinct view once, however many followers share it. Tray entries
come from the hub's owner caches (`owner_cache.py`), never from Redis, with the
same rules as `StoryReader.tray` (`core/tray.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.core import frames
from server.core.audience import Relation
from server.core.tray import TrayState, in_tray, order_tray, ring, visible_items
from server.push.connection import Connection
from server.push.owner_cache import OwnerCache, SourceViews

View = tuple[bool, bool, bool, bool, int, SourceViews]
OWNER_VIEW: View = (True, False, False, False, 0, ())


def view_of(conn: Connection, owner: str, sources: tuple[str, ...] = ()) -> View:
    """How `conn` sees `owner`: (is owner, follows, close friend, hidden, seen-up-to,
    and its relation to each of `sources`: the owners of the sources of `owner`'s shares)."""
    views = tuple([(o, conn.relation(o)) for o in sources]) if sources else ()
    if owner == conn.user_id:
        return (True, False, False, False, 0, views) if views else OWNER_VIEW
    return (
        False,
        owner in conn.following,
        owner in conn.close_friend_of,
        owner in conn.hidden_from,
        conn.seen.get(owner, 0),
        views,
    )


class TrayViews:
    """Tray entries and their frames over `owners` (owner id → cache), at `now()` (epoch ms)."""

    def __init__(self, owners: dict[str, OwnerCache], now: Callable[[], int]) -> None:
        self.owners = owners
        self.now = now

    def view_now(self, conn: Connection, owner: str) -> View:
        """`view_of()` with the sources of `owner`'s cached shares."""
        oc = self.owners.get(owner)
        return view_of(conn, owner, oc.source_owners() if oc else ())

    def entry(self, owner: str, view: View, now: int) -> tuple[TrayState, dict[str, Any]] | None:
        """`owner`'s ring as seen from `view`, with its TrayEntry JSON; None when there is none.

        A share counts only where its source is visible too (`OwnerCache.shown`).
        """
        is_owner, follows, close_friend, hidden, seen, views = view
        oc = self.owners.get(owner)
        relation = Relation(is_owner, follows, close_friend, hidden)
        visible = oc and in_tray(is_owner, follows, hidden)
        items = visible_items(oc.items.values(), relation, now) if oc and visible else []
        if oc and items:
            items = [i for i in items if oc.shown(i, views, now)]
        state = ring(owner, items, seen, own=is_owner)
        if state is None:
            return None
        return state, state.entry(oc.user if oc else {"id": owner})

    def entry_frame(
        self, owner: str, view: View, cache: dict[View, frames.Encoded]
    ) -> frames.Encoded:
        """tray.update or tray.remove for `owner` as seen from `view`, encoded once per view."""
        frame = cache.get(view)
        if frame is not None:
            return frame
        found = self.entry(owner, view, self.now())
        if found is None:
            frame = frames.encode("tray.remove", self.now(), owner_id=owner)
        else:
            frame = frames.encode("tray.update", self.now(), entry=found[1])
        cache[view] = frame
        return frame

    def update(self, conn: Connection, owner: str) -> frames.Encoded:
        """`conn`'s current tray.update / tray.remove for `owner` (one viewer, not cached)."""
        return self.entry_frame(owner, self.view_now(conn, owner), {})

    def tray(self, conn: Connection) -> list[dict[str, Any]]:
        """`conn`'s tray entries in PROTOCOL.md order (as `StoryReader.tray` from Redis)."""
        now, states, entries = self.now(), [], {}
        for owner in conn.tray_owners():
            found = self.entry(owner, self.view_now(conn, owner), now)
            if found is not None:
                states.append(found[0])
                entries[owner] = found[1]
        return [entries[s.owner_id] for s in order_tray(conn.user_id, states)]
