"""What the hub does with each event from the bus, given its local recipients.

Lifecycle events of an owner's items (story.new, story.removed, story.audience,
story.source_audience) update the owner's cache and queue frames to each
connection allowed to see them; personal events (from the user's inbox)
update that user's connections (seen.sync) or are forwarded as they are.
Frames that are the same for every recipient are encoded once; tray entries
once per distinct `View` (`views.py`). `graph.changed` is the hub's own: it
moves a connection between channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.core import frames
from server.core.audience import Relation, can_see
from server.core.tray import ActiveItem
from server.push.connection import Connection
from server.push.owner_cache import OwnerCache
from server.push.view_counts import ViewCountPush
from server.push.views import TrayViews, View, view_of
from server.stories.shares import Source

MISSING: Any = object()
Event = dict[str, Any]
Enqueue = Callable[[Connection, frames.Encoded], None]


class Lifecycle:
    """Event handlers over the hub's `owners` caches; frames go through `enqueue`.

    Each handler takes the decoded event and the ready connections on its channel.
    """

    def __init__(
        self, owners: dict[str, OwnerCache], views: TrayViews, enqueue: Enqueue,
        counts: ViewCountPush, now: Callable[[], int],
    ) -> None:  # fmt: skip
        self.owners = owners
        self.views = views
        self.enqueue = enqueue
        self.counts = counts
        self.now = now

    # ---- story lifecycle ---------------------------------------------------------------

    def _fan_out(
        self,
        owner: str,
        audience: str,
        conns: list[Connection],
        story: frames.Encoded,
        own: frames.Encoded,
        source: Source | None = None,
    ) -> None:
        """Queue the story frame and the new tray entry to every connection allowed to see.

        Both go as one packed frame, built once per distinct view and shared. For a
        share, `source` is its source: the viewer must also be allowed its audience
        (its liveness is not asked: the frame is a new share, or the removal of one).
        """
        per_view: dict[View, frames.Encoded | None] = {}
        entries: dict[View, frames.Encoded] = {}
        enqueue, view = self.enqueue, view_of
        oc = self.owners.get(owner)
        sources = oc.source_owners(source) if oc else (source.owner,) if source else ()
        for conn in conns:  # the hot loop: one pass per follower per post
            seen_as = view(conn, owner, sources)
            out = per_view.get(seen_as, MISSING)
            if out is MISSING:
                is_owner, follows, close_friend, hidden, _, views = seen_as
                relation = Relation(is_owner, follows, close_friend, hidden)
                allowed = (is_owner or follows) and relation.can_see(audience)
                if allowed and source is not None:
                    allowed = can_see(dict(views)[source.owner], source.audience)
                out = per_view[seen_as] = (
                    frames.pack(
                        [
                            own if is_owner else story,
                            self.views.entry_frame(owner, seen_as, entries),
                        ]
                    )
                    if allowed
                    else None
                )
            if out is not None:
                enqueue(conn, out)

    def story_new(self, event: Event, conns: list[Connection]) -> None:
        """A new item: story.new with the new tray entry, to those allowed to see it."""
        owner, item = event["owner_id"], event["item"]
        oc = self.owners.setdefault(owner, OwnerCache(user=item["owner"]))
        oc.user = item["owner"]
        seq = event["seq"]
        source = Source.from_json(event["source"]) if event.get("source") else None
        oc.items[seq] = ActiveItem(seq, event["audience"], event["created_ms"],
                                   event["expires_ms"], source.id if source else None)  # fmt: skip
        if source is not None:
            oc.remember(source)
        shared = frames.encode("story.new", self.now(), item=item)
        own = frames.encode("story.new", self.now(), item={**item, "seen": True, "view_count": 0})
        self._fan_out(owner, event["audience"], conns, shared, own, source)

    def story_removed(self, event: Event, conns: list[Connection]) -> None:
        """Deleted or expired: story.removed with the new tray entry, to those who could see it."""
        owner, seq = event["owner_id"], event["seq"]
        oc = self.owners.get(owner)
        source = Source.from_json(event["source"]) if event.get("source") else None
        if oc:
            gone = oc.items.pop(seq, None)
            if gone and gone.source and oc.sources and gone.source in oc.sources:
                source = oc.sources[gone.source]  # what this process showed it with
            oc.removed = oc.removed | {seq}
            oc.forget_unused()
            oc.source_changed(event["item_id"], status=event["reason"])  # the owner's own shares
        payload = {"item_id": event["item_id"], "owner_id": owner, "reason": event["reason"]}
        shared = frames.encode("story.removed", self.now(), **payload)
        self._fan_out(owner, event["audience"], conns, shared, shared, source)

    def story_audience(self, event: Event, conns: list[Connection]) -> None:
        """An item's audience changed: the new tray entry to those who could see it before or now."""
        owner, seq = event["owner_id"], event["seq"]
        oc = self.owners.get(owner)
        if oc and seq in oc.items:
            old = oc.items[seq]
            oc.items[seq] = ActiveItem(
                seq, event["audience"], old.created_ms, old.expires_ms, old.source
            )
        if oc:
            oc.source_changed(event["item_id"], audience=event["audience"])  # own shares of it
        cache: dict[View, frames.Encoded] = {}
        for conn in conns:
            relation = conn.relation(owner)
            if relation.can_see(event["audience"]) or relation.can_see(event["old_audience"]):
                if conn.in_tray(owner):
                    self.enqueue(
                        conn, self.views.entry_frame(owner, self.views.view_now(conn, owner), cache)
                    )

    def story_source_audience(self, event: Event, conns: list[Connection]) -> None:
        """The source of share `seq` changed audience: viewers who lose the share get
        story.removed ("deleted": to them it is gone) with their new tray entry; viewers
        who gain it, the tray entry."""
        owner, seq = event["owner_id"], event["seq"]
        source, old = Source.from_json(event["source"]), event["old_audience"]
        oc = self.owners.get(owner)
        item = oc.items.get(seq) if oc else None
        if oc is None or item is None or item.source != source.id:
            return  # not cached here: nothing of it was shown from this process
        oc.remember(source)
        removed = frames.encode("story.removed", self.now(), item_id=event["item_id"],
                                owner_id=owner, reason="deleted")  # fmt: skip
        sources = oc.source_owners()
        entries: dict[View, frames.Encoded] = {}
        packed: dict[View, frames.Encoded] = {}
        for conn in conns:
            relation = conn.relation(owner)
            if not (relation.is_owner or relation.follows) or not relation.can_see(item.audience):
                continue  # never had it from the sharer's side
            to_source = conn.relation(source.owner)
            before, after = can_see(to_source, old), can_see(to_source, source.audience)
            if before == after:
                continue
            view = view_of(conn, owner, sources)
            entry = self.views.entry_frame(owner, view, entries)
            if before:
                entry = packed.get(view) or packed.setdefault(view, frames.pack([removed, entry]))
            self.enqueue(conn, entry)

    # ---- personal events (inbox) ----------------------------------------------------------

    def forward(self, event: Event, conns: list[Connection]) -> None:
        """A personal event as it is: same type and fields, with the frame's `ts`."""
        payload = {k: v for k, v in event.items() if k != "type"}
        frame = frames.encode(event["type"], self.now(), **payload)
        for conn in conns:
            self.enqueue(conn, frame)

    def story_viewed(self, event: Event, conns: list[Connection]) -> None:
        """Forwarded, and the owner's coalesced `story.view_count` (`view_counts.py`)."""
        self.forward(event, conns)
        self.counts.on_viewed(event, conns)

    def seen_sync(self, event: Event, conns: list[Connection]) -> None:
        """Another device saw `owner_id`'s items up to `seq`: the ring's new state, where it moved."""
        owner, seq = event["owner_id"], event["seq"]
        cache: dict[View, frames.Encoded] = {}
        for conn in conns:
            if seq > conn.seen.get(owner, 0):
                conn.see(owner, seq)
                if conn.in_tray(owner):
                    self.enqueue(
                        conn, self.views.entry_frame(owner, self.views.view_now(conn, owner), cache)
                    )
