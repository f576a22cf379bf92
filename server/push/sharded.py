"""Sharded pub/sub on a Redis Cluster: one link per primary, channels on their slot's node.

The Bus SPUBLISHes each event on the node that owns its channel's slot (the
owner's or user's hash tag), and a sharded message reaches only subscribers on
that node's shard. So `ShardedBroker` holds one `NodeLink` (a `Broker` speaking
SSUBSCRIBE/SPUBLISH to one primary through a plain client of that node) per
primary, and SSUBSCRIBEs each channel on the link of its slot's owner.

Reference counts are kept here (`refs`); a link holds each of its channels once.
Subscriptions are batched per link as the one-Redis broker batches them, in one
SSUBSCRIBE per slot (Redis refuses a cross-slot SSUBSCRIBE).

Topology changes:
- when a node stops serving a slot (migration, failover) it sends `sunsubscribe`
  for the channels of that slot: the link reports them (`lost`), and so does a
  link that dropped; either way the broker re-reads the slot map (CLUSTER SLOTS
  from any node it knows), opens links to new primaries, closes links to nodes
  that serve no slot any more, moves each channel whose slot changed owner to
  its new link, waits for those SSUBSCRIBEs and then calls
  `receiver.on_resubscribed()`, so every socket gets a fresh snapshot;
- every link runs its own canary: a channel named for one of its node's slots
  (`Keys.canary_channel("<nonce>.<n>")`, n chosen so), SPUBLISHed every
  `canary_interval_s`; a deaf link is rebuilt. A canary whose slot moved makes
  its link reconnect with a new one;
- a link that cannot connect (its node is down) stays down until the slot map
  names another primary; meanwhile `readiness()` reports it (503 on /readyz).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.crc import key_slot

from server.core.backoff import Backoff
from server.push.broker import CONFIRM_TIMEOUT_S, REDIS_ERRORS, Broker, Receiver
from server.store.client import TIMEOUTS

log = logging.getLogger("stories.broker")
SLOTS = 16384
Node = tuple[str, int]  # (host, port)


def _slot(channel: str) -> int:
    return int(key_slot(channel.encode()))


def parse_slots(reply: list[Any]) -> dict[int, Node]:
    """CLUSTER SLOTS reply → slot → primary `(host, port)` (slots no node serves are absent)."""
    owners: dict[int, Node] = {}
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        for slot in range(start, end + 1):
            owners[slot] = (host, int(primary[1]))
    return owners


class NodeLink(Broker):
    """One primary's sharded pub/sub link: a `Broker` speaking SSUBSCRIBE/SPUBLISH.

    `pick_canary()` names a canary channel on this node's slots at every connect;
    `on_lost(link, channels)` hears of referenced channels the node dropped (their
    slot moved) and of the link's own drops (`channels` empty).
    """

    MESSAGE = "smessage"
    SUBSCRIBED = "ssubscribe"

    def __init__(
        self,
        node: Node,
        receiver: Receiver,
        pick_canary: Callable[[Node], str],
        on_lost: Callable[[NodeLink, list[str]], None],
        *,
        canary_interval_s: float,
        canary_timeout_s: float,
    ) -> None:
        pool = aioredis.BlockingConnectionPool(
            host=node[0], port=node[1], max_connections=4, timeout=5, **TIMEOUTS
        )
        super().__init__(
            aioredis.Redis(connection_pool=pool),
            receiver,
            "",
            canary_interval_s=canary_interval_s,
            canary_timeout_s=canary_timeout_s,
        )
        self.node = node
        self.name = f"{node[0]}:{node[1]}"
        self._pick_canary = pick_canary
        self._on_lost = on_lost
        self._leaving: Counter[bytes] = Counter()  # SUNSUBSCRIBEs sent, replies not yet read
        self.owe_snapshot = False  # set when channels moved here while the link was down

    def _order(self, channels: list[str]) -> list[str]:
        return sorted(channels, key=_slot)

    async def _send_subscribe(self, pubsub: Any, channels: list[str]) -> None:
        for group in _by_slot(channels):
            self.commands += 1
            await pubsub.ssubscribe(*group)

    async def _send_unsubscribe(self, pubsub: Any, channels: list[str]) -> None:
        for group in _by_slot(channels):
            self.commands += 1
            self._leaving.update(c.encode() for c in group)
            await pubsub.sunsubscribe(*group)

    async def _publish_canary(self) -> None:
        # a MOVED (the canary's slot left this node) is a silent canary: the link is rebuilt
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await self.redis.execute_command("SPUBLISH", self.canary_channel, self.nonce)

    async def _connect(self) -> None:
        self.canary_channel = self._pick_canary(self.node)
        self._leaving.clear()
        try:
            await super()._connect()
        except redis.exceptions.ResponseError as exc:  # MOVED: a slot left while we were away
            self._on_lost(self, [])
            raise redis.exceptions.ConnectionError(f"subscribing on {self.name}: {exc}") from exc
        if self.owe_snapshot:  # channels came here while it was down: the hub resyncs
            self.owe_snapshot = False
            self.receiver.on_resubscribed()

    async def _read(self) -> None:
        try:
            await super()._read()
        except redis.exceptions.ResponseError as exc:  # MOVED: a slot left before we knew
            raise redis.exceptions.ConnectionError(f"on {self.name}: {exc}") from exc

    async def _drop(self) -> None:
        was_up = self.pubsub is not None
        await super()._drop()
        if was_up:
            self._on_lost(self, [])

    def _on_control(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sunsubscribe":
            return
        channel: bytes = msg["channel"]
        if self._leaving[channel] > 0:  # the reply to our own SUNSUBSCRIBE
            self._leaving[channel] -= 1
            if not self._leaving[channel]:
                del self._leaving[channel]
            return
        name = channel.decode()
        if name == self.canary_channel:
            raise redis.exceptions.ConnectionError("the canary's slot left this node")
        if name in self.refs:
            self.forget(name)  # subscribed again where the next slot map puts it
            self._on_lost(self, [name])

    def forget(self, channel: str) -> None:
        """Stop counting `channel` here without a SUNSUBSCRIBE (the node already dropped it)."""
        self.refs.pop(channel, None)
        self._dirty.discard(channel)

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(Exception):
            await self.redis.aclose()


def _by_slot(channels: list[str]) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for channel in channels:
        groups.setdefault(_slot(channel), []).append(channel)
    return list(groups.values())


async def _confirmed(channels: dict[NodeLink, list[str]]) -> None:
    """Count `channels` in on their links now (so a `release` right after finds them),
    then wait for the links' confirmations."""
    batches = [link.count_in(*chs) for link, chs in channels.items()]
    waits = [asyncio.shield(batch) for batch in batches if batch is not None]
    if waits:
        await asyncio.gather(*waits)


class ShardedBroker:
    """Ref-counted sharded subscriptions over one link per primary, following the slot map.

    `redis` is the process's `RedisCluster` (kept for `Services.close`, which
    closes it itself); `seeds` are `(host, port)` nodes to read the slot map from
    at first (the URL's startup nodes); `canary_channel(name)` builds canary
    channel names (`Keys.canary_channel`). The hub's interface is the `Broker`'s:
    `acquire` / `release`, `start` / `close`, `wait_ready`, `readiness`,
    `healthy`, `refs`, `reconnects`.
    """

    def __init__(
        self,
        redis: Any,
        receiver: Receiver,
        seeds: list[Node],
        canary_channel: Callable[[str], str],
        *,
        canary_interval_s: float = 1.0,
        canary_timeout_s: float = 3.0,
    ) -> None:
        self.redis = redis
        self.receiver = receiver
        self.seeds = list(seeds)
        self.canary_name = canary_channel
        self.canary_interval_s = canary_interval_s
        self.canary_timeout_s = canary_timeout_s
        self.refs: Counter[str] = Counter()
        self.home: dict[str, NodeLink] = {}  # referenced channel → the link holding it
        self.links: dict[Node, NodeLink] = {}
        self.owners: dict[int, Node] = {}  # slot → primary
        self.nonce = secrets.token_hex(4)
        self.rehomes = 0  # slot-map changes that moved channels
        self._hint: Node | None = None  # the node to ask for the slot map first
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    # -- the hub's interface

    @property
    def healthy(self) -> bool:
        """True when every link's canary came back recently."""
        return bool(self.links) and all(link.healthy for link in self.links.values())

    @property
    def reconnects(self) -> int:
        """Reconnects of every link so far plus slot-map changes that moved channels."""
        return sum(link.reconnects for link in self.links.values()) + self.rehomes

    @property
    def canary_channels(self) -> list[str]:
        """The canary channel of each link now (one per primary)."""
        return [link.canary_channel for link in self.links.values()]

    async def start(self) -> None:
        """Read the slot map, open a link per primary, and keep following the map."""
        self._task = asyncio.create_task(self._follow(), name="sharded-broker")

    async def close(self) -> None:
        """Stop following the map and close every link (their own clients too)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        links, self.links = list(self.links.values()), {}
        for link in links:
            await link.close()

    async def acquire(self, *channels: str) -> None:
        """Count one more local interest in each channel; SSUBSCRIBE the new ones on the
        link of their slot's primary. Returns once those links confirmed (at most
        `CONFIRM_TIMEOUT_S` each), at once for a link that is down (its reconnect or
        the next slot map subscribes them, then the hub resyncs)."""
        fresh: dict[NodeLink, list[str]] = {}
        for channel in channels:
            self.refs[channel] += 1
            if self.refs[channel] == 1:
                link = self._link_of(channel)
                if link is not None:
                    self.home[channel] = link
                    fresh.setdefault(link, []).append(channel)
        await _confirmed(fresh)

    def release(self, *channels: str) -> None:
        """Count one less interest in each channel; SUNSUBSCRIBE those left with none.

        Never waits and never raises.
        """
        gone: dict[NodeLink, list[str]] = {}
        for channel in channels:
            count = self.refs.get(channel, 0)
            if count > 1:
                self.refs[channel] = count - 1
            elif count == 1:
                del self.refs[channel]
                link = self.home.pop(channel, None)
                if link is not None:
                    gone.setdefault(link, []).append(channel)
        for link, chs in gone.items():
            link.release(*chs)

    async def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Wait until the slot map is read and every link subscribed (or `timeout_s`)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            await asyncio.wait_for(self._started.wait(), timeout_s)
        except TimeoutError:
            return False
        for link in list(self.links.values()):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or not await link.wait_ready(left):
                return False
        return True

    def readiness(self) -> str:
        """ "ok" when every primary's link is up and its canary came back recently."""
        if not self.links:
            return "pub/sub not connected (no slot map)"
        if len(self.owners) < SLOTS:
            return "pub/sub: cluster has slots without a primary"
        for link in self.links.values():
            state = link.readiness()
            if state != "ok":
                return f"{state} on {link.name}"
        return "ok"

    # -- slots and links

    def _link_of(self, channel: str) -> NodeLink | None:
        node = self.owners.get(_slot(channel))
        return self.links.get(node) if node is not None else None

    def _pick_canary(self, node: Node) -> str:
        for n in range(SLOTS * 4):
            name = self.canary_name(f"{self.nonce}.{n}")
            if self.owners.get(_slot(name)) == node:
                return name
        raise redis.exceptions.ConnectionError(f"no slot on {node[0]}:{node[1]}")

    def _lost(self, link: NodeLink, channels: list[str]) -> None:
        """A link dropped, or its node dropped some of our channels: re-read the map."""
        if channels:
            self._hint = link.node  # it knows the slot left it; another node may not yet
            log.info("%d channel(s) left %s; re-reading the slot map", len(channels), link.name)
        self._wake.set()

    async def _read_slots(self) -> dict[int, Node]:
        """CLUSTER SLOTS from the first node that answers: our links' nodes, then the seeds."""
        hint, self._hint = self._hint, None
        for node in [*([hint] if hint else []), *self.links, *self.seeds]:
            client = aioredis.Redis(host=node[0], port=node[1], **TIMEOUTS)
            try:
                return parse_slots(await client.execute_command("CLUSTER", "SLOTS"))
            except (*REDIS_ERRORS, redis.exceptions.ResponseError) as exc:
                log.debug("CLUSTER SLOTS from %s:%d failed: %s", node[0], node[1], exc)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
        raise redis.exceptions.ConnectionError("no cluster node answered CLUSTER SLOTS")

    async def _follow(self) -> None:
        """Apply the slot map now and whenever a link reports a loss or stays down."""
        backoff = Backoff(base_s=0.05, cap_s=2.0)
        while True:
            self._wake.clear()
            try:
                await self._apply(await self._read_slots())
                backoff.reset()
                self._started.set()
                with contextlib.suppress(TimeoutError):
                    # a link that is down keeps us re-reading: its node may be gone for good
                    await asyncio.wait_for(self._wake.wait(), self.canary_interval_s)
                if not self._wake.is_set() and all(
                    link.pubsub is not None for link in self.links.values()
                ):
                    await self._wake.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster slot map not read: %s", exc)
                await asyncio.sleep(backoff.next_delay())

    async def _apply(self, owners: dict[int, Node]) -> None:
        """Open and close links for `owners`' primaries; move channels whose slot moved."""
        self.owners = owners
        primaries = set(owners.values())
        fresh: list[NodeLink] = []
        for node in primaries - set(self.links):
            link = NodeLink(node, self.receiver, self._pick_canary, self._lost,
                            canary_interval_s=self.canary_interval_s,
                            canary_timeout_s=self.canary_timeout_s)  # fmt: skip
            self.links[node] = link
            await link.start()
            fresh.append(link)
        if fresh:  # moved channels go out on a ready link, confirmed before the resync
            await asyncio.gather(*(link.wait_ready(CONFIRM_TIMEOUT_S) for link in fresh))
        moves: dict[NodeLink, list[str]] = {}
        for channel, old in list(self.home.items()):
            new = self._link_of(channel)
            if new is old and channel in old.refs:
                continue
            old.forget(channel)
            if new is None:
                del self.home[channel]  # no primary now; the next map places it
                continue
            self.home[channel] = new
            moves.setdefault(new, []).append(channel)
        for channel in self.refs:  # referenced while its slot had no primary
            if channel not in self.home and (placed := self._link_of(channel)) is not None:
                self.home[channel] = placed
                moves.setdefault(placed, []).append(channel)
        stale = [link for node, link in self.links.items() if node not in primaries]
        for link in stale:
            del self.links[link.node]
            await link.close()
        if moves:
            for link in moves:
                link.owe_snapshot = link.pubsub is None  # its connect subscribes them, later
            await _confirmed(moves)
            self.rehomes += 1
            log.info("slot map changed: %d channel(s) moved", sum(map(len, moves.values())))
            self.receiver.on_resubscribed()
