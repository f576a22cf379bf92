"""The hub: local connections, what they subscribe to, and fan-out to them.

The broker hands every publication to `on_message`; the hub decodes it once,
updates its per-owner cache of active items, and for each local connection
interested in the channel checks the audience and queues frames. Frames that
are the same for every recipient (story.new, story.removed) are encoded once;
tray entries differ by viewer (seen state, close friends) and are encoded once
per distinct entry. Tray entries are computed from the cache, not from Redis,
so pushing a post costs no Redis work per follower.

Shares (`server/stories/shares.py`): a share is pushed, counted and removed only where its
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

The hub is the facade of the push layer; its parts, one concept each:
`lifecycle.py` handles each event type (its table is `Hub.handlers`),
`views.py` computes tray entries and frames per distinct view,
`owner_loads.py` fills the owner caches (`owner_cache.py`) in shared batches,
and `source.py` is all the storage it reads (`HubSource`). Sending is the
dispatcher's (`dispatch.py`): bounded outboxes, one flush per event-loop
iteration, packing, and 1013 for a reader that falls behind.
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

from server.core import codes, events, frames
from server.core.backoff import Backoff, raise_if_cancelling
from server.core.clock import Clock
from server.core.keys import Keys
from server.core.settings import Settings
from server.push.admission import SignInGate
from server.push.broker import Subscriptions
from server.push.connection import Connection
from server.push.dispatch import Dispatcher
from server.push.interest import Interest
from server.push.lifecycle import Lifecycle
from server.push.owner_cache import OwnerCache, rings_sharing_from
from server.push.owner_loads import OwnerLoads
from server.push.retry import retry_reason
from server.push.source import HubSource
from server.push.view_counts import ViewCountPush
from server.push.views import TrayViews

log = logging.getLogger("stories.hub")
Handler = Callable[[dict[str, Any], list[Connection]], None]
MAX_UNKNOWN_TYPES = 64  # distinct unknown event types remembered (each is logged once)


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
        self.broker: Subscriptions | None = None
        self.conns: set[Connection] = set()
        self.interest: Interest[Connection] = Interest(self.conns.__contains__)
        self.owners: dict[str, OwnerCache] = {}  # owner → cache, filled by `loads`
        self.loads = OwnerLoads(source, self.owners)
        self.views = TrayViews(self.owners, self.now)
        self.draining = False
        self.signing_in: set[Callable[[int, str], Awaitable[None]]] = set()  # close() of sockets
        # accepted but not yet signed in (ws.py), so that a drain closes them properly too
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        self.gate = SignInGate(settings.ws_sign_in_concurrency, settings.ws_sign_in_queue)
        self.out = Dispatcher(self.conns, self._too_slow)
        self.enqueue = self.out.enqueue  # queue a frame for one connection (`Dispatcher.enqueue`)
        self.counts = ViewCountPush(self.enqueue, self.now)
        self.events = Lifecycle(self.owners, self.views, self.enqueue, self.counts, self.now)
        self.handlers: dict[str, Handler] = self._handler_table()
        self._unknown: set[str] = set()  # event types already logged as unknown

    def _handler_table(self) -> dict[str, Handler]:
        """Event type (`server/core/events.py`) → what the hub does with it; built once.

        Lifecycle events update the owner cache and fan out per audience;
        `seen.sync`, `graph.changed` and `story.viewed` change per-connection state;
        the rest are personal events forwarded to the user's sockets as they are.
        """
        on = self.events
        return {
            events.STORY_NEW: on.story_new,
            events.STORY_REMOVED: on.story_removed,
            events.STORY_AUDIENCE: on.story_audience,
            events.STORY_SOURCE_AUDIENCE: on.story_source_audience,
            events.STORY_VIEWED: on.story_viewed,
            events.SEEN_SYNC: on.seen_sync,
            events.GRAPH_CHANGED: self._on_graph_changed,
            events.STORY_REACTION: on.forward,
            events.STORY_REPLY: on.forward,
            events.CAPTURE_FINISHED: on.forward,
            events.CAPTURE_FAILED: on.forward,
        }

    def bind(self, broker: Subscriptions) -> None:
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
        await conn.close(codes.WS_1012_SERVICE_RESTART, self._retry_reason())
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
        own = not self.loads.known(uid)  # the user's own items: fill their cache in the same trip
        read = await self.source.sign_in(uid, with_user=claims is not None, with_items=own)
        if claims is not None:
            conn.user = read.user or await self.source.ensure_user(uid, claims)
        if conn not in self.conns:  # detached meanwhile: it must not join anything now
            return
        if read.items is not None and not self.loads.known(uid):  # (another socket's may have)
            await self.loads.fill_own(uid, conn.user, read.items)
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
                    self.loads.drop(owner)

    def _channel_owner(self, channel: str) -> str | None:
        """The user of an `ev:{user}:stories` or `ev:{user}:inbox` channel of ours."""
        prefix = self.keys.p + "ev:{"
        if channel.startswith(prefix):
            owner, sep, kind = channel[len(prefix) :].rpartition("}:")
            if sep and kind in ("stories", "inbox"):
                return owner
        return None

    async def _snapshot(self, conn: Connection) -> None:
        """Queue `conn`'s tray.snapshot, computed from the owner caches once they are complete."""
        if conn not in self.conns:  # detached meanwhile: load nothing for it
            return
        while pending := self.loads.unloaded(conn.tray_owners(), conn.user):
            for load in pending:
                await load  # a failed load raises here (the endpoint: 1013)
            if conn not in self.conns:
                return
        conn.ready = True
        self.enqueue(conn, frames.encode("tray.snapshot", self.now(), items=self.views.tray(conn)))

    def _too_slow(self, conn: Connection) -> None:
        """The dispatcher gave up on `conn` (its outbox overflowed): close 1013, detach."""
        log.info("closing slow reader %s (%s)", conn.id, conn.user_id)
        asyncio.get_running_loop().create_task(
            self._close(conn, codes.WS_1013_TRY_AGAIN_LATER, "too slow a reader")
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
        self.loads.clear()  # reloaded as each snapshot needs them (a story.new may come first)
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

    # ---- graph changes (inbox) ------------------------------------------------------------

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
                while pending := self.loads.unloaded([other]):
                    for load in pending:
                        await load
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("graph change for %s not applied (%s)", conn.id, exc)
            return
        self.enqueue(conn, self.views.update(conn, other))
        for owner in rings_sharing_from(self.owners, conn, other):  # their shares' rule moved
            self.enqueue(conn, self.views.update(conn, owner))

    def _retry_reason(self) -> str:
        """The 1012 close reason: `{"retry_after_ms"}` with jitter (`retry.retry_reason`)."""
        return retry_reason(self.settings)
