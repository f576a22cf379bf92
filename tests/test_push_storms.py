"""Storms: many sockets closing or opening at once, and what each costs the process.

(a) Detaching a socket visits its own channels only, however many channels the
    hub holds (a structural count, not a timing).
(b) A storm of detaches while the pub/sub link goes down, and another once it
    is down, raise nothing, and leave no subscription behind once it is back.
(c) Subscriptions are batched: sockets signing in together cost a few
    SUBSCRIBE commands, and one sign-in costs two however many owners it follows.
(d) A connect storm against a small Redis pool: every socket is served, or
    closed 1013 with a jittered `{"retry_after_ms"}`, and served when it retries.
(e) A close storm of a few hundred sockets: no deaf verdict, no traceback.
(f) Personal events never travel on an owner's stories channel, which every
    follower's process subscribes to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
import websockets

from server.core.settings import Settings
from server.push.connection import Connection
from server.push.wire import AsgiWire
from server.services import Services
from server.store.embedded_redis import EmbeddedRedis
from tests.live import Client, LiveServer
from tests.pubsub import canaries
from tests.test_push_leaks import CLEAN, _channels, _clean, _null_close, _null_send, _wait_clean


class CountedConnection(Connection):
    """A Connection that counts how often it is hashed: once per set or dict it is looked up in."""

    __slots__ = ()
    hashes = 0

    def __hash__(self) -> int:
        CountedConnection.hashes += 1
        return object.__hash__(self)


def _conn(uid: str, settings: Settings, cls: type[Connection] = Connection) -> Connection:
    return cls({"id": uid}, AsgiWire(_null_send), _null_close, settings.ws_send_queue_bytes)


@pytest.fixture
def own_redis(tmp_path) -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis(tmp_path / "own-redis")
    embedded.start()
    yield embedded
    embedded.stop()


def _commands(url: str, name: str) -> int:
    """How many times Redis ran command `name` (INFO commandstats) since it started."""
    client = sync_redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_detach_visits_only_the_sockets_own_channels(settings: Settings) -> None:
    svc = await Services.start(settings)
    try:
        assert await svc.broker.wait_ready(10)
        g, now = svc.store.graph, svc.store.clock.now_ms()
        owners = [f"own{n}" for n in range(3)]
        for owner in owners:
            await g.follow("me", owner, now)
        others = [_conn(f"other{n}", settings) for n in range(1500)]  # 1,500 inbox channels
        for n in range(0, len(others), 100):
            await asyncio.gather(*(svc.hub.attach(c) for c in others[n : n + 100]))
        fans = [_conn(f"fan{n}", settings) for n in range(3)]  # company on my channels
        for fan in fans:
            for owner in owners:
                await g.follow(fan.user_id, owner, now)
            await svc.hub.attach(fan)
        me = _conn("me", settings, CountedConnection)
        await svc.hub.attach(me)
        assert len(svc.hub.interest) > 1500
        mine = me.channels(svc.store.keys)
        assert len(mine) in (4, 5)  # my inbox, three owners' stories (and my own, before)
        CountedConnection.hashes = 0
        await svc.hub.detach(me)
        # a scan of the table would look `me` up once per channel (1,500+ times)
        assert CountedConnection.hashes <= 2 * len(mine), CountedConnection.hashes
        assert me not in svc.hub.conns and me.closing
        stories = [svc.store.keys.stories_channel(o) for o in owners]
        for channel in stories:
            assert me not in [c for c in svc.hub.interest.get(channel) or [] if c.ready]
        await asyncio.gather(*(svc.hub.detach(c) for c in others + fans))
        assert _clean(svc) == CLEAN
    finally:
        await svc.close()


async def _attach_many(svc: Services, conns: list[Connection]) -> None:
    for n in range(0, len(conns), 100):
        await asyncio.gather(*(svc.hub.attach(c) for c in conns[n : n + 100]))


async def test_release_storms_while_the_link_goes_and_once_it_is_gone_raise_nothing(
    settings: Settings, own_redis: EmbeddedRedis, tmp_path
) -> None:
    settings = dataclasses.replace(settings, redis_url=own_redis.url)
    svc = await Services.start(settings)
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    restarted: EmbeddedRedis | None = None
    try:
        assert await svc.broker.wait_ready(10)
        # 1. the link is cut while 1,500 sockets release their channels
        conns = [_conn(f"s{n}", settings) for n in range(1500)]
        await _attach_many(svc, conns)
        killer = aioredis.Redis.from_url(own_redis.url)
        detaches = [asyncio.create_task(svc.hub.detach(c)) for c in conns]
        await asyncio.sleep(0)
        assert await killer.client_kill_filter(_type="pubsub") >= 1
        await killer.aclose()
        results = await asyncio.gather(*detaches, return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        deadline = time.monotonic() + 10
        while _channels(own_redis.url, settings.redis_prefix) != canaries(svc.broker):
            assert time.monotonic() < deadline, _channels(own_redis.url, settings.redis_prefix)
            await asyncio.sleep(0.05)
        assert _clean(svc) == CLEAN

        # 2. Redis is gone: 1,500 more release while the broker has no link at all
        conns = [_conn(f"t{n}", settings) for n in range(1500)]
        await _attach_many(svc, conns)
        own_redis.proc.kill()
        own_redis.proc.wait()
        deadline = time.monotonic() + 10
        while svc.broker.readiness() == "ok":
            assert time.monotonic() < deadline, "the broker did not notice Redis going"
            await asyncio.sleep(0.02)
        results = await asyncio.gather(*(svc.hub.detach(c) for c in conns), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert _clean(svc) == CLEAN
        own_redis.stop()
        restarted = EmbeddedRedis(tmp_path / "own-redis")
        restarted.start()
        deadline = time.monotonic() + 15
        while _channels(restarted.url, settings.redis_prefix) != canaries(svc.broker):
            assert time.monotonic() < deadline, _channels(restarted.url, settings.redis_prefix)
            await asyncio.sleep(0.05)
        assert loop_errors == []
    finally:
        await svc.close()
        if restarted is not None:
            restarted.stop()


async def test_subscriptions_are_batched(settings: Settings, own_redis: EmbeddedRedis) -> None:
    settings = dataclasses.replace(settings, redis_url=own_redis.url)
    svc = await Services.start(settings)
    try:
        assert await svc.broker.wait_ready(10)
        g, now = svc.store.graph, svc.store.clock.now_ms()
        for n in range(30):
            await g.follow("fan", f"owner{n}", now)
        before = _commands(own_redis.url, "subscribe")
        fan = _conn("fan", settings)
        await svc.hub.attach(fan)  # its inbox, then 30 owners' stories channels
        assert _commands(own_redis.url, "subscribe") - before <= 2
        assert len(fan.channels(svc.store.keys)) == 31

        conns = [_conn(f"u{n}", settings) for n in range(300)]
        before = _commands(own_redis.url, "subscribe")
        await asyncio.gather(*(svc.hub.attach(c) for c in conns))
        assert _commands(own_redis.url, "subscribe") - before <= 30  # not one per socket
        before = _commands(own_redis.url, "unsubscribe")
        await asyncio.gather(*(svc.hub.detach(c) for c in [*conns, fan]))
        deadline = time.monotonic() + 10
        while _channels(own_redis.url, settings.redis_prefix) != canaries(svc.broker):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert _commands(own_redis.url, "unsubscribe") - before <= 30
        assert _clean(svc) == CLEAN
    finally:
        await svc.close()


async def _try_socket(url: str) -> tuple[str, int | None]:
    """("served", None), ("retry", retry_after_ms), or ("failed: …", None) for one try."""
    try:
        async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
            while True:
                data = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                for event in data if isinstance(data, list) else [data]:
                    if event["type"] == "tray.snapshot":
                        return "served", None
    except websockets.ConnectionClosed as closed:
        if closed.rcvd is None:
            return "failed: closed without a close frame", None
        if closed.rcvd.code != 1013:
            return f"failed: closed {closed.rcvd.code} {closed.rcvd.reason}", None
        try:
            wait = orjson.loads(closed.rcvd.reason)["retry_after_ms"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return f"failed: 1013 without retry_after_ms: {closed.rcvd.reason}", None
        return "retry", wait
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        return f"failed: {type(exc).__name__}", None


def _count_pool_waits(live: LiveServer) -> Callable[[], int]:
    """Count commands that found the server's Redis pool empty (all connections in use)."""
    pool = live.app.state.services.store.redis.connection_pool
    original, waits = pool.get_connection, [0]

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        if not pool.can_get_connection():
            waits[0] += 1
        return await original(*args, **kwargs)

    pool.get_connection = get_connection
    return lambda: waits[0]


@pytest.mark.one_redis  # about one Redis's blocking pool (cluster pools fail fast)
async def test_connect_storm_on_a_small_redis_pool_is_served_or_told_to_retry(
    settings: Settings,
) -> None:
    small = dataclasses.replace(
        settings, redis_max_connections=8, ws_sign_in_concurrency=2, ws_sign_in_queue=20,
        ws_reconnect_base_ms=50, ws_reconnect_spread_ms=300,
    )  # fmt: skip
    with LiveServer(small) as live:
        fan = Client(live, "stormfan")
        for n in range(6):
            owner = Client(live, f"stormowner{n}")
            await fan.http.put(f"/me/following/{owner.id}")
            await owner.post_photo(audience="public")
            await owner.close()
        starved = _count_pool_waits(live)
        url = f"{live.ws_url}?token={fan.token}"
        results = await asyncio.gather(*(_try_socket(url) for _ in range(300)))
        assert starved() == 0, "a Redis command had to wait for the pool"
        failed = [r for r, _ in results if r.startswith("failed")]
        assert failed == [], failed[:5]
        waits = [w for r, w in results if r == "retry"]
        assert waits, "the storm never filled the sign-in queue"
        assert all(isinstance(w, int) and 50 <= w < 350 for w in waits), waits[:5]
        assert len(set(waits)) > 1  # jittered
        assert [r for r, _ in results].count("served") >= 22  # 2 signing in + 20 queued

        async def until_served(wait: int) -> str:
            for _ in range(40):
                await asyncio.sleep(wait / 1000)
                outcome, again = await _try_socket(url)
                if outcome != "retry":
                    return outcome
                wait = again or wait
            return "still told to retry"

        retried = await asyncio.gather(*(until_served(w) for w in waits))
        assert set(retried) == {"served"}, [r for r in retried if r != "served"][:5]
        await _wait_clean(live, settings.redis_url or "", settings.redis_prefix)
        await fan.close()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_close_storm_has_no_deaf_event_and_no_traceback(settings: Settings) -> None:
    collect = Collect()
    watched = [
        logging.getLogger(),
        logging.getLogger("uvicorn"),
        logging.getLogger("uvicorn.error"),
    ]
    with LiveServer(settings) as live:
        for logger in watched:
            logger.addHandler(collect)
        try:
            owners = [Client(live, f"closeowner{n}") for n in range(10)]
            fans = [Client(live, f"closefan{n}") for n in range(40)]
            for fan in fans:
                for owner in owners:
                    await fan.http.put(f"/me/following/{owner.id}")
            socks = []
            for fan in fans:
                socks += await asyncio.gather(*(fan.socket() for _ in range(10)))
            svc: Services = live.app.state.services
            assert len(svc.hub.conns) == 400
            collect.records.clear()
            for n, sock in enumerate(socks):  # all at once: half abort, half close cleanly
                if n % 2:
                    sock.ws.transport.abort()
            await asyncio.gather(*(s.close() for n, s in enumerate(socks) if not n % 2))
            await _wait_clean(live, settings.redis_url or "", settings.redis_prefix)
            await asyncio.sleep(2 * svc.broker.canary_interval_s + 0.5)  # a canary round or two
            assert svc.broker.reconnects == 0 and svc.broker.readiness() == "ok"
            deaf = [r.getMessage() for r in collect.records if "deaf" in r.getMessage()]
            assert deaf == []
            bad = [r for r in collect.records if r.exc_info or r.levelno >= logging.ERROR]
            assert bad == [], [r.getMessage() for r in bad[:3]]
            for client in owners + fans:
                await client.close()
        finally:
            for logger in watched:
                logger.removeHandler(collect)


@pytest.mark.one_redis  # pattern subscriptions: sharded pub/sub has none
async def test_personal_events_never_go_on_a_stories_channel(settings: Settings) -> None:
    with LiveServer(settings) as live:
        owner, fan = Client(live, "evowner"), Client(live, "evfan")
        listener = aioredis.Redis.from_url(settings.redis_url or "")
        pubsub = listener.pubsub()
        p = settings.redis_prefix
        await pubsub.psubscribe(p + "ev:{*}:stories", p + "ev:{*}:inbox")
        try:
            await fan.http.put(f"/me/following/{owner.id}")
            await owner.http.put(f"/me/close-friends/{fan.id}")
            sock = await fan.socket()
            own_sock = await owner.socket()
            item = await owner.post_photo(audience="followers")
            await sock.next("story.new")
            assert (await fan.http.post(f"/stories/{item['id']}/seen")).status_code == 204
            r = await fan.http.post(f"/stories/{item['id']}/reactions", json={"emoji": "🔥"})
            assert r.status_code == 204
            r = await fan.http.post(f"/stories/{item['id']}/replies", json={"text": "nice"})
            assert r.status_code == 201
            r = await owner.http.patch(f"/stories/{item['id']}", json={"audience": "public"})
            assert r.status_code == 200, r.text
            await owner.http.put(f"/me/hidden/{fan.id}")
            await owner.http.delete(f"/me/hidden/{fan.id}")
            assert (await owner.http.delete(f"/stories/{item['id']}")).status_code == 204
            await own_sock.next("story.removed")
            by_kind: dict[str, set[str]] = {"stories": set(), "inbox": set()}
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if msg is None:
                    if "story.removed" in by_kind["stories"]:
                        break
                    continue
                kind = msg["channel"].decode().rsplit(":", 1)[1]
                by_kind[kind].add(orjson.loads(msg["data"])["type"])
            assert by_kind["stories"] == {"story.new", "story.audience", "story.removed"}
            personal = {"story.viewed", "seen.sync", "story.reaction", "story.reply",
                        "graph.changed"}  # fmt: skip
            assert personal <= by_kind["inbox"]
            await sock.close()
            await own_sock.close()
        finally:
            await pubsub.aclose()
            await listener.aclose()
            await owner.close()
            await fan.close()
