"""The hub: local connections, what they subscribe to, and fan-out to them.

The broker hands every publication to `on_message`; the hub decodes it once,
updates its per-owner cache of active items, and for each local connection
interested in the channel checks the audience and queues frames. Frames that
are the same for every recipient (story.new, story.removed) are encoded once;
tray entries differ by viewer (seen state, close friends) and are encoded once
per distinct entry. Tray entries are computed from the cache, not from Redis,
so pushing a post costs no Redis work per follower.

Shares (`shares.py`): a share is pushed, counted and removed only where its
source is visible too. The cache keeps each share's `Source` (audience, status;
from the event, or read once when the owner is loaded), and a view of an owner
whose ring holds shares includes the viewer's relation to each source owner, so
the rule is applied from in-memory sets like every other audience check.

Sending is the dispatcher's (`dispatch.py`): bounded outboxes, one flush per
event-loop iteration, packing, and 1013 for a reader that falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.exceptions

from server import frames
from server.audience import Relation, can_see
from server.backoff import Backoff, raise_if_cancelling
from server.broker import Broker
from server.clock import rfc3339
from server.connection import NOBODY, Connection
from server.dispatch import Dispatcher
from server.drain import retry_reason
from server.keys import item_id
from server.owner_cache import OwnerCache, SourceViews, rings_sharing_from
from server.reads import StoryReader
from server.shares import Source, load_sources
from server.store import Store
from server.tray import ActiveItem, ring, visible_items
from server.view_counts import ViewCountPush

log = logging.getLogger("stories.hub")
View = tuple[bool, bool, bool, bool, int, SourceViews]
OWNER_VIEW: View = (True, False, False, False, 0, ())
MISSING: Any = object()


def _ids(members: list[bytes] | set[bytes]) -> frozenset[str]:
    """User ids from Redis, interned: thousands of connections share one string per owner."""
    # from a set, not a generator: a frozenset copied from a set is sized once (half the table)
    return frozenset({sys.intern(m.decode()) for m in members}) if members else NOBODY


class Hub:
    """Implements the broker's `Receiver`. Start with `bind(broker)`."""

    def __init__(self, store: Store, reader: StoryReader) -> None:
        self.s = store
        self.reader = reader
        self.broker: Broker | None = None
        self.conns: set[Connection] = set()
        self.interest: dict[str, set[Connection]] = defaultdict(set)
        self.owners: dict[str, OwnerCache] = {}
        self.draining = False
        self.signing_in: set[Callable[[int, str], Awaitable[None]]] = set()  # close() of sockets
        # accepted but not yet signed in (ws.py), so that a drain closes them properly too
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        self.out = Dispatcher(self.conns, self._too_slow)
        self.enqueue = self.out.enqueue  # queue a frame for one connection (`Dispatcher.enqueue`)
        self.counts = ViewCountPush(self.enqueue, self.now)

    def bind(self, broker: Broker) -> None:
        self.broker = broker

    def now(self) -> int:
        return self.s.clock.now_ms()

    # ---- connections -------------------------------------------------------------

    async def attach(self, conn: Connection) -> None:
        """Subscribe first, then load state and queue the snapshot (PROTOCOL.md).

        While draining, the socket is closed at once with 1012 and a wait.
        """
        if self.draining:
            await conn.close(frames.WS_1012_SERVICE_RESTART, self._retry_reason())
            conn.closing = True
            return
        self.conns.add(conn)
        await self._load_relations(conn)
        for channel in conn.channels(self.s.keys):
            await self._subscribe(conn, channel)
        await self._snapshot(conn)

    async def detach(self, conn: Connection) -> None:
        """Forget `conn` and release its channels; idempotent."""
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        for channel in [c for c, members in self.interest.items() if conn in members]:
            await self._unsubscribe(conn, channel)
        if conn.count_timer:
            conn.count_timer.cancel()
        conn.outbox.take()
        if conn.sending and conn.sending is not asyncio.current_task():
            conn.sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.sending

    async def _load_relations(self, conn: Connection) -> None:
        k = self.s.keys
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.zrange(k.following(conn.user_id), 0, -1)
        pipe.smembers(k.close_friend_of(conn.user_id))
        pipe.smembers(k.hidden_from(conn.user_id))
        pipe.hgetall(k.seen(conn.user_id))
        following, cfof, hidden, seen = await pipe.execute()
        conn.following = _ids(following)
        conn.close_friend_of = _ids(cfof)
        conn.hidden_from = _ids(hidden)
        conn.seen = {sys.intern(o.decode()): int(v) for o, v in seen.items()}

    async def _subscribe(self, conn: Connection, channel: str) -> None:
        if conn not in self.conns:  # detached while a graph or resync task was pending
            return
        members = self.interest[channel]
        if conn in members:
            return
        members.add(conn)
        assert self.broker is not None
        await self.broker.acquire(channel)
        owner = self._stories_owner(channel)
        if owner and owner not in self.owners and conn in members:  # not detached meanwhile
            await self._load_owner(owner, conn.user if owner == conn.user_id else None)

    async def _unsubscribe(self, conn: Connection, channel: str) -> None:
        members = self.interest.get(channel)
        if not members or conn not in members:
            return
        members.discard(conn)
        if not members:
            del self.interest[channel]
            owner = self._stories_owner(channel)
            if owner:
                self.owners.pop(owner, None)
        assert self.broker is not None
        await self.broker.release(channel)

    def _stories_owner(self, channel: str) -> str | None:
        prefix = self.s.keys.p + "ev:{"
        if channel.startswith(prefix) and channel.endswith("}:stories"):
            return channel[len(prefix) : -len("}:stories")]
        return None

    async def _load_owner(self, owner: str, user: dict[str, Any] | None = None) -> None:
        """Fill `owner`'s cache: their User (unless given) and active items."""
        cache = self.owners.setdefault(owner, OwnerCache(user={"id": owner}))
        if user is None:
            user = await self.s.users.get(owner)
        raw = await self.s.redis.zrangebyscore(
            self.s.keys.items(owner), f"({self.now()}", "+inf", withscores=True
        )
        if user:
            cache.user = user
        for member, score in raw:
            item = ActiveItem.parse(member, score)
            if item.seq not in cache.removed:
                cache.items.setdefault(item.seq, item)
        await self._load_sources(cache)

    async def _load_sources(self, cache: OwnerCache) -> None:
        """Read the sources of the cache's shares (events that came first win)."""
        known = cache.sources or {}
        wanted = {i.source for i in cache.items.values() if i.source and i.source not in known}
        for source in (await load_sources(self.s, wanted)).values() if wanted else ():
            if not cache.sources or source.id not in cache.sources:
                cache.remember(source)

    async def _snapshot(self, conn: Connection) -> None:
        entries = await self.reader.tray(conn.user_id)
        conn.ready = True
        self.enqueue(conn, frames.encode("tray.snapshot", self.now(), items=entries))

    def _too_slow(self, conn: Connection) -> None:
        """The dispatcher gave up on `conn` (its outbox overflowed): close 1013, detach."""
        log.info("closing slow reader %s (%s)", conn.id, conn.user_id)
        asyncio.get_running_loop().create_task(
            self._close(conn, frames.WS_1013_TRY_AGAIN_LATER, "too slow a reader")
        )

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await conn.close(code, reason)
        await self.detach(conn)

    # ---- Receiver -------------------------------------------------------------------

    def on_message(self, channel: str, data: bytes) -> None:
        members = self.interest.get(channel)
        if not members:
            return
        event = orjson.loads(data)
        handler = getattr(self, "_on_" + event.get("type", "").replace(".", "_"), None)
        if handler is not None:
            handler(event, [c for c in members if c.ready and not c.closing])

    def on_resubscribed(self) -> None:
        """After a pub/sub gap: reload every connection's state and send fresh snapshots."""
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self.resync_all())
        else:
            self._resync_again = True  # a second gap while resyncing: run it once more

    async def resync_all(self) -> None:
        """Reload relations, fix subscriptions and send a snapshot to every connection.

        Connections whose reload failed (Redis still flapping) are retried with
        backoff until each has had its fresh snapshot.
        """
        backoff = Backoff(base_s=0.2, cap_s=5.0)
        pending = list(self.conns)
        self._resync_again = False
        while pending:
            failed = await self._resync_once(pending)
            if self._resync_again:  # another gap meanwhile: everyone again
                self._resync_again, failed = False, list(self.conns)
            pending = [c for c in failed if c in self.conns and not c.closing]
            if pending:
                raise_if_cancelling()
                await asyncio.sleep(backoff.next_delay())

    async def _resync_once(self, conns: list[Connection]) -> list[Connection]:
        """One pass over `conns`; returns the ones that could not be resynced."""
        self.owners.clear()
        failed: list[Connection] = []
        reloaded: set[str] = set()  # a story.new may re-create a cache before its reload
        for conn in conns:
            if conn.closing or conn not in self.conns:
                continue
            try:
                await self._load_relations(conn)
                wanted = conn.channels(self.s.keys)
                for channel in [c for c, members in self.interest.items() if conn in members]:
                    if channel not in wanted:  # e.g. an unfollow during the gap
                        await self._unsubscribe(conn, channel)
                for channel in wanted:
                    await self._subscribe(conn, channel)
                for owner in {self._stories_owner(c) for c in wanted} - {None} - reloaded:
                    if self.interest.get(self.s.keys.stories_channel(str(owner))):  # not detached
                        reloaded.add(str(owner))
                        await self._load_owner(str(owner))
                await self._snapshot(conn)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("resync of %s failed (%s); will retry", conn.id, exc)
                failed.append(conn)
            except Exception:
                log.exception("resync of %s failed", conn.id)
        return failed

    # ---- story lifecycle ---------------------------------------------------------------

    @staticmethod
    def _view(conn: Connection, owner: str, sources: tuple[str, ...] = ()) -> View:
        """How `conn` sees `owner`: (is owner, follows, close friend, hidden, seen-up-to,
        and its relation to each of `sources`: the owners of the sources of `owner`'s shares).

        Every frame about `owner` depends on nothing else, so one fan-out computes
        and encodes each distinct view once, however many followers share it.
        """
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

    def _view_now(self, conn: Connection, owner: str) -> View:
        """`_view()` with the sources of `owner`'s cached shares."""
        oc = self.owners.get(owner)
        return self._view(conn, owner, oc.source_owners() if oc else ())

    def _entry_frame(
        self, owner: str, view: View, cache: dict[View, frames.Encoded]
    ) -> frames.Encoded:
        """tray.update or tray.remove for `owner` as seen from `view`, encoded once per view."""
        frame = cache.get(view)
        if frame is not None:
            return frame
        is_owner, follows, close_friend, hidden, seen, views = view
        oc = self.owners.get(owner)
        relation = Relation(is_owner, follows, close_friend, hidden)
        in_tray = is_owner or (follows and not hidden)
        now = self.now()
        items = visible_items(oc.items.values(), relation, now) if oc and in_tray else []
        if oc and items:
            items = [i for i in items if oc.shown(i, views, now)]
        state = ring(owner, items, seen, own=is_owner)
        if state is None:
            frame = frames.encode("tray.remove", now, owner_id=owner)
        else:
            first = item_id(owner, state.first_unseen_seq) if state.first_unseen_seq else None
            entry = {"owner": oc.user if oc else {"id": owner}, "has_unseen": state.has_unseen,
                     "item_count": state.item_count, "latest_at": rfc3339(state.latest_ms),
                     "first_unseen_id": first}  # fmt: skip
            frame = frames.encode("tray.update", now, entry=entry)
        cache[view] = frame
        return frame

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
        enqueue, view_of = self.enqueue, self._view
        oc = self.owners.get(owner)
        sources = oc.source_owners(source) if oc else (source.owner,) if source else ()
        for conn in conns:  # the hot loop: one pass per follower per post
            view = view_of(conn, owner, sources)
            out = per_view.get(view, MISSING)
            if out is MISSING:
                is_owner, follows, close_friend, hidden, _, views = view
                relation = Relation(is_owner, follows, close_friend, hidden)
                allowed = (is_owner or follows) and relation.can_see(audience)
                if allowed and source is not None:
                    allowed = can_see(dict(views)[source.owner], source.audience)
                out = per_view[view] = (
                    frames.pack(
                        [own if is_owner else story, self._entry_frame(owner, view, entries)]
                    )
                    if allowed
                    else None
                )
            if out is not None:
                enqueue(conn, out)

    def _on_story_new(self, event: dict[str, Any], conns: list[Connection]) -> None:
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

    def _on_story_removed(self, event: dict[str, Any], conns: list[Connection]) -> None:
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

    def _on_story_audience(self, event: dict[str, Any], conns: list[Connection]) -> None:
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
                    self.enqueue(conn, self._entry_frame(owner, self._view_now(conn, owner), cache))

    def _on_story_source_audience(self, event: dict[str, Any], conns: list[Connection]) -> None:
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
            view = self._view(conn, owner, sources)
            entry = self._entry_frame(owner, view, entries)
            if before:
                entry = packed.get(view) or packed.setdefault(view, frames.pack([removed, entry]))
            self.enqueue(conn, entry)

    # ---- personal events (inbox) ----------------------------------------------------------

    def _forward(self, event: dict[str, Any], conns: list[Connection]) -> None:
        payload = {k: v for k, v in event.items() if k != "type"}
        frame = frames.encode(event["type"], self.now(), **payload)
        for conn in conns:
            self.enqueue(conn, frame)

    _on_story_reaction = _forward
    _on_story_reply = _forward
    _on_capture_finished = _forward
    _on_capture_failed = _forward

    def _on_story_viewed(self, event: dict[str, Any], conns: list[Connection]) -> None:
        self._forward(event, conns)
        self.counts.on_viewed(event, conns)

    def _on_seen_sync(self, event: dict[str, Any], conns: list[Connection]) -> None:
        owner, seq = event["owner_id"], event["seq"]
        cache: dict[View, frames.Encoded] = {}
        for conn in conns:
            if seq > conn.seen.get(owner, 0):
                conn.seen[owner] = seq
                if conn.in_tray(owner):
                    self.enqueue(conn, self._entry_frame(owner, self._view_now(conn, owner), cache))

    def _on_graph_changed(self, event: dict[str, Any], conns: list[Connection]) -> None:
        for conn in conns:
            asyncio.get_running_loop().create_task(self._apply_graph(conn, event))

    async def _apply_graph(self, conn: Connection, event: dict[str, Any]) -> None:
        kind, other, on = event["kind"], sys.intern(event["other_id"]), event["on"]
        attr = {
            "following": "following",
            "close_friend": "close_friend_of",
            "hidden": "hidden_from",
        }
        if kind not in attr:
            return
        current: frozenset[str] = getattr(conn, attr[kind])
        setattr(conn, attr[kind], current | {other} if on else current - {other})
        channel = self.s.keys.stories_channel(other)
        if channel in conn.channels(self.s.keys):
            await self._subscribe(conn, channel)
        else:
            await self._unsubscribe(conn, channel)
        self.enqueue(conn, self._entry_frame(other, self._view_now(conn, other), {}))
        for owner in rings_sharing_from(self.owners, conn, other):  # their shares' rule moved
            self.enqueue(conn, self._entry_frame(owner, self._view_now(conn, owner), {}))

    def _retry_reason(self) -> str:
        """The 1012 close reason: `{"retry_after_ms"}` with jitter (`drain.retry_reason`)."""
        return retry_reason(self.s.settings)
