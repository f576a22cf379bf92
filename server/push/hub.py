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

Sockets come and go in storms (thousands at once after a network blip), so
each step of a socket's life costs O(its own channels), never O(all channels):
`sign_in` joins its inbox and reads its User and relation sets in one
pipeline; the stories channels it needs are subscribed in the broker's next
batch; owners not cached yet are read in one pipeline shared by every socket
waiting for them; and the `tray.snapshot` is computed from the same caches as
the deltas (no Redis work when they are warm). `detach` leaves exactly the
channels `Connection.channels()` names (`interest.py`).

Sending is the dispatcher's (`dispatch.py`): bounded outboxes, one flush per
event-loop iteration, packing, and 1013 for a reader that falls behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.exceptions

from server.core import events, frames
from server.core.audience import Relation, can_see
from server.core.backoff import Backoff, raise_if_cancelling
from server.core.clock import Clock, rfc3339
from server.core.keys import Keys, item_id
from server.core.settings import Settings
from server.core.tray import ActiveItem, TrayState, in_tray, order_tray, ring, visible_items
from server.push.admission import SignInGate
from server.push.broker import Broker
from server.push.connection import Connection
from server.push.dispatch import Dispatcher
from server.push.interest import Interest
from server.push.owner_cache import OwnerCache, SourceViews, rings_sharing_from
from server.push.retry import retry_reason
from server.push.source import HubSource
from server.push.view_counts import ViewCountPush
from server.stories.shares import Source

log = logging.getLogger("stories.hub")
View = tuple[bool, bool, bool, bool, int, SourceViews]
OWNER_VIEW: View = (True, False, False, False, 0, ())
MISSING: Any = object()
Handler = Callable[[dict[str, Any], list[Connection]], None]
MAX_UNKNOWN_TYPES = 64  # distinct unknown event types remembered (each is logged once)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a load's failure as seen (its waiters report it), so asyncio does not log it."""
    if not future.cancelled():
        future.exception()


class Hub:
    """Implements the broker's `Receiver`. Start with `bind(broker)`.

    Reads storage only through `source`; `keys` names the channels, `settings`
    bound sign-ins and reconnect waits, `clock` stamps frames and expiry checks.
    """

    def __init__(self, source: HubSource, keys: Keys, settings: Settings, clock: Clock) -> None:
        self.source = source
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.broker: Broker | None = None
        self.conns: set[Connection] = set()
        self.interest: Interest[Connection] = Interest(self.conns.__contains__)
        self.owners: dict[str, OwnerCache] = {}
        # owner → the pending fill of its cache, or None once it is loaded (no object per owner)
        self._loads: dict[str, asyncio.Future[None] | None] = {}
        self._fills: set[asyncio.Task[None]] = set()
        self.draining = False
        self.signing_in: set[Callable[[int, str], Awaitable[None]]] = set()  # close() of sockets
        # accepted but not yet signed in (ws.py), so that a drain closes them properly too
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        self.gate = SignInGate(settings.ws_sign_in_concurrency, settings.ws_sign_in_queue)
        self.out = Dispatcher(self.conns, self._too_slow)
        self.enqueue = self.out.enqueue  # queue a frame for one connection (`Dispatcher.enqueue`)
        self.counts = ViewCountPush(self.enqueue, self.now)
        self.handlers: dict[str, Handler] = self._handler_table()
        self._unknown: set[str] = set()  # event types already logged as unknown

    def _handler_table(self) -> dict[str, Handler]:
        """Event type (`events.py`) → what the hub does with it; built once.

        Lifecycle events update the owner cache and fan out per audience;
        `seen.sync`, `graph.changed` and `story.viewed` change per-connection state;
        the rest are personal events forwarded to the user's sockets as they are.
        """
        return {
            events.STORY_NEW: self._on_story_new,
            events.STORY_REMOVED: self._on_story_removed,
            events.STORY_AUDIENCE: self._on_story_audience,
            events.STORY_SOURCE_AUDIENCE: self._on_story_source_audience,
            events.STORY_VIEWED: self._on_story_viewed,
            events.SEEN_SYNC: self._on_seen_sync,
            events.GRAPH_CHANGED: self._on_graph_changed,
            events.STORY_REACTION: self._forward,
            events.STORY_REPLY: self._forward,
            events.CAPTURE_FINISHED: self._forward,
            events.CAPTURE_FAILED: self._forward,
        }

    def bind(self, broker: Broker) -> None:
        self.broker = broker

    def now(self) -> int:
        return self.clock.now_ms()

    # ---- connections -------------------------------------------------------------

    async def sign_in(self, conn: Connection, claims: dict[str, Any] | None) -> bool:
        """First half of attaching: join the inbox, then load the relations (and the User).

        With `claims` (a token's), one pipeline also reads the User, and a user
        the token names but Redis does not know is created from them
        (`UserStore.ensure`); `conn.user` is set. False when the hub is
        draining (`conn` was closed 1012). Raises redis errors (the endpoint
        closes 1013).
        """
        if self.draining:
            await self._refuse(conn)
            return False
        self.conns.add(conn)
        await self._acquire(self.interest.join(conn, [self.keys.inbox_channel(conn.user_id)]))
        await self._load_relations(conn, claims)
        return True

    async def attach(self, conn: Connection) -> None:
        """Subscribe first, then load state and queue the snapshot (PROTOCOL.md).

        `sign_in` first when it was not called. While draining, the socket is
        closed at once with 1012 and a wait.
        """
        if self.draining:
            await self._refuse(conn)
            return
        if conn.closing:  # closed (and detached) while it was signing in: never again
            return
        if conn not in self.conns and not await self.sign_in(conn, None):
            return
        await self._snapshot(conn)

    async def _refuse(self, conn: Connection) -> None:
        await conn.close(frames.WS_1012_SERVICE_RESTART, self._retry_reason())
        conn.closing = True

    async def detach(self, conn: Connection) -> None:
        """Forget `conn` and release its channels; idempotent. O(the socket's channels)."""
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        conn.ready, conn.closing = False, True  # the fan-out skips it until its lists compact
        self._emptied(self.interest.gone(conn, conn.channels(self.keys)))
        if conn.count_timer:
            conn.count_timer.cancel()
        conn.outbox.take()
        if conn.sending and conn.sending is not asyncio.current_task():
            conn.sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.sending

    async def _load_relations(self, conn: Connection, claims: dict[str, Any] | None = None) -> None:
        """Read `conn`'s relation sets and seen map (and, with `claims`, its User); apply them.

        One read (`HubSource.sign_in`), which also brings the user's own active
        items when their cache is not loaded yet.
        """
        uid = conn.user_id
        own = uid not in self._loads  # the user's own items: fill their cache in the same trip
        read = await self.source.sign_in(uid, with_user=claims is not None, with_items=own)
        if claims is not None:
            conn.user = read.user or await self.source.ensure_user(uid, claims)
        if conn not in self.conns:  # detached meanwhile: it must not join anything now
            return
        if read.items is not None and uid not in self._loads:  # (another socket may have filled it)
            sources = await self._sources_of([read.items])
            if uid not in self._loads:
                self._filled(uid, conn.user, read.items, sources)
        if read.seen:
            conn.seen = read.seen
        await self._set_relations(conn, read.following, read.close_friend_of, read.hidden_from)

    async def _set_relations(
        self, conn: Connection, following: frozenset[str], cfof: frozenset[str],
        hidden: frozenset[str],
    ) -> None:  # fmt: skip
        """Give `conn` these relation sets and move it between stories channels to match.

        The sets and the interest table change in one step (no await between),
        so `conn.channels()` always names exactly the channels it is on; then
        the channels that got their first member are subscribed (one batch).
        """
        k = self.keys
        before = conn.followed_owners()
        conn.following, conn.close_friend_of, conn.hidden_from = following, cfof, hidden
        after = conn.followed_owners()
        if before == after:
            return
        left = [k.stories_channel(o) for o in before - after]
        self._emptied(self.interest.leave(conn, left))
        await self._acquire(
            self.interest.join(conn, [k.stories_channel(o) for o in after - before])
        )

    async def _acquire(self, channels: list[str]) -> None:
        if channels:
            assert self.broker is not None
            await self.broker.acquire(*channels)

    def _emptied(self, channels: list[str]) -> None:
        """Channels left without members: unsubscribe them; drop caches nobody needs now."""
        if not channels:
            return
        assert self.broker is not None
        self.broker.release(*channels)
        k = self.keys
        for channel in channels:
            owner = self._channel_owner(channel)
            if owner and k.stories_channel(owner) not in self.interest:
                if k.inbox_channel(owner) not in self.interest:  # not the owner's own socket either
                    self.owners.pop(owner, None)
                    self._loads.pop(owner, None)

    def _channel_owner(self, channel: str) -> str | None:
        """The user of an `ev:{user}:stories` or `ev:{user}:inbox` channel of ours."""
        prefix = self.keys.p + "ev:{"
        if channel.startswith(prefix):
            owner, sep, kind = channel[len(prefix) :].rpartition("}:")
            if sep and kind in ("stories", "inbox"):
                return owner
        return None

    # ---- owner caches: filled in batches ----------------------------------------------

    def _unloaded(self, owners: list[str], own: dict[str, Any] | None = None) -> list[Any]:
        """Loads still to wait for before `owners`' caches are complete; starts missing ones.

        Owners never loaded (or whose load failed) are read in one pipeline,
        whoever else waits for them: sockets signing in together share it.
        """
        missing = [o for o in owners if o not in self._loads]
        if missing:
            self._start_load(missing, own)
        return [f for o in owners if (f := self._loads[o]) is not None and not f.done()]

    def _start_load(self, owners: list[str], own: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        futures = {o: loop.create_future() for o in owners}
        for owner, future in futures.items():
            future.add_done_callback(_retrieve)
            self._loads[owner] = future
            self.owners.setdefault(owner, OwnerCache(user={"id": owner}))
        task = loop.create_task(self._fill(futures, own))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(
        self, futures: dict[str, asyncio.Future[None]], own: dict[str, Any] | None
    ) -> None:
        """One read of each owner's User (unless `own` is that User) and active items."""
        try:
            reads = await self.source.owners(list(futures), own)
            sources = await self._sources_of([read.items for read in reads.values()])
        except Exception as exc:
            for owner, future in futures.items():
                if self._loads.get(owner) is future:
                    del self._loads[owner]
                future.set_exception(exc)
            return
        for owner, future in futures.items():
            if self._loads.get(owner) is future:  # not dropped meanwhile
                self._filled(owner, reads[owner].user, reads[owner].items, sources)
            future.set_result(None)

    def _filled(
        self,
        owner: str,
        user: dict[str, Any] | None,
        items: list[ActiveItem],
        sources: dict[str, Source],
    ) -> None:
        """Merge a read of `owner`'s User and active items into its cache; mark it loaded.

        Events that arrived during the read were applied first and win
        (`setdefault`; removed seqs stay removed). An owner with nothing active
        keeps no cache at all (most users have no story at a given moment; a
        `story.new` makes one), only its mark in `_loads`.
        """
        self._loads[owner] = None
        cache = self.owners.get(owner)
        if cache is None:
            if not items:
                return
            cache = self.owners[owner] = OwnerCache(user={"id": owner})
        if user:
            cache.user = user
        for item in items:
            if item.seq not in cache.removed:
                cache.items.setdefault(item.seq, item)
            source = sources.get(item.source) if item.source else None
            if source is not None and not (cache.sources and source.id in cache.sources):
                cache.remember(source)  # a source event that came first wins
        if not cache.items and not cache.removed:
            del self.owners[owner]

    async def _sources_of(self, reads: list[list[ActiveItem]]) -> dict[str, Source]:
        """The sources of the shares among active-item reads `reads`, in one round trip."""
        wanted = {i.source for items in reads for i in items if i.source}
        return await self.source.sources(wanted) if wanted else {}

    async def _snapshot(self, conn: Connection) -> None:
        """Queue `conn`'s tray.snapshot, computed from the owner caches once they are complete."""
        if conn not in self.conns:  # detached meanwhile: load nothing for it
            return
        while pending := self._unloaded(conn.tray_owners(), conn.user):
            for load in pending:
                await load  # a failed load raises here (the endpoint: 1013)
            if conn not in self.conns:
                return
        conn.ready = True
        self.enqueue(conn, frames.encode("tray.snapshot", self.now(), items=self._tray(conn)))

    def _tray(self, conn: Connection) -> list[dict[str, Any]]:
        """`conn`'s tray entries in PROTOCOL.md order, from the caches (as `reader.tray` from Redis)."""
        now, states, entries = self.now(), [], {}
        for owner in conn.tray_owners():
            found = self._tray_entry(owner, self._view_now(conn, owner), now)
            if found is not None:
                states.append(found[0])
                entries[owner] = found[1]
        return [entries[s.owner_id] for s in order_tray(conn.user_id, states)]

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
        """A publication on `channel`: decoded once, handed to its type's handler (`handlers`)."""
        members = self.interest.get(channel)
        if not members:
            return
        event = orjson.loads(data)
        kind = event.get("type")
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._unknown_type(channel, kind)
            return
        handler(event, [c for c in members if c.ready and not c.closing])

    def _unknown_type(self, channel: str, kind: Any) -> None:
        """Log an event type without a handler (once per type) and drop the event."""
        name = kind if isinstance(kind, str) else repr(kind)[:40]
        if name in self._unknown:
            return
        if len(self._unknown) < MAX_UNKNOWN_TYPES:
            self._unknown.add(name)
        log.warning("dropping event of unknown type %r on %s", name, channel)

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
        self.owners.clear()  # reloaded as each snapshot needs them (a story.new may come first)
        self._loads.clear()
        failed: list[Connection] = []
        for conn in conns:
            if conn.closing or conn not in self.conns:
                continue
            try:
                await self._load_relations(conn)  # e.g. an unfollow during the gap: leaves
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

    def _tray_entry(
        self, owner: str, view: View, now: int
    ) -> tuple[TrayState, dict[str, Any]] | None:
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
        first = item_id(owner, state.first_unseen_seq) if state.first_unseen_seq else None
        entry = {"owner": oc.user if oc else {"id": owner}, "has_unseen": state.has_unseen,
                 "item_count": state.item_count, "latest_at": rfc3339(state.latest_ms),
                 "first_unseen_id": first}  # fmt: skip
        return state, entry

    def _entry_frame(
        self, owner: str, view: View, cache: dict[View, frames.Encoded]
    ) -> frames.Encoded:
        """tray.update or tray.remove for `owner` as seen from `view`, encoded once per view."""
        frame = cache.get(view)
        if frame is not None:
            return frame
        found = self._tray_entry(owner, view, self.now())
        if found is None:
            frame = frames.encode("tray.remove", self.now(), owner_id=owner)
        else:
            frame = frames.encode("tray.update", self.now(), entry=found[1])
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

    def _on_story_viewed(self, event: dict[str, Any], conns: list[Connection]) -> None:
        self._forward(event, conns)
        self.counts.on_viewed(event, conns)

    def _on_seen_sync(self, event: dict[str, Any], conns: list[Connection]) -> None:
        owner, seq = event["owner_id"], event["seq"]
        cache: dict[View, frames.Encoded] = {}
        for conn in conns:
            if seq > conn.seen.get(owner, 0):
                conn.see(owner, seq)
                if conn.in_tray(owner):
                    self.enqueue(conn, self._entry_frame(owner, self._view_now(conn, owner), cache))

    def _on_graph_changed(self, event: dict[str, Any], conns: list[Connection]) -> None:
        for conn in conns:
            asyncio.get_running_loop().create_task(self._apply_graph(conn, event))

    async def _apply_graph(self, conn: Connection, event: dict[str, Any]) -> None:
        kind, other, on = event["kind"], sys.intern(event["other_id"]), event["on"]
        if kind not in ("following", "close_friend", "hidden") or conn not in self.conns:
            return
        sets = {"following": conn.following, "close_friend": conn.close_friend_of,
                "hidden": conn.hidden_from}  # fmt: skip
        sets[kind] = sets[kind] | {other} if on else sets[kind] - {other}
        try:
            await self._set_relations(conn, sets["following"], sets["close_friend"], sets["hidden"])
            if conn.in_tray(other):
                while pending := self._unloaded([other]):
                    for load in pending:
                        await load
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("graph change for %s not applied (%s)", conn.id, exc)
            return
        self.enqueue(conn, self._entry_frame(other, self._view_now(conn, other), {}))
        for owner in rings_sharing_from(self.owners, conn, other):  # their shares' rule moved
            self.enqueue(conn, self._entry_frame(owner, self._view_now(conn, owner), {}))

    def _retry_reason(self) -> str:
        """The 1012 close reason: `{"retry_after_ms"}` with jitter (`retry.retry_reason`)."""
        return retry_reason(self.settings)
