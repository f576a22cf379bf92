"""No leaks in the push layer, and the socket limits close with the right codes.

(a) Attaching and detaching many connections — one after another, in
    concurrent waves, while a `graph.changed` event for the connection is in
    flight, and while the hub resyncs after a pub/sub gap — leaves nothing
    behind: no hub connection, interest, owner cache or writer task, no broker
    reference, and Redis lists no channel of ours but the canary. The same
    holds for real WebSocket clients against a live server (closed cleanly,
    aborted, or closed right after a graph edit).
(b) A client frame over `ws_max_frame_bytes` closes with 1009; a flood of ops
    beyond `ws_ops_per_second` closes with 1008.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

import orjson
import pytest
import websockets

from server.core import events
from server.core.settings import Settings
from server.core.tray import ActiveItem
from server.push.connection import Connection
from server.push.wire import AsgiWire
from server.services import Services
from tests.live import Client, LiveServer
from tests.pubsub import canaries, our_channels

N_USERS = 40
FOLLOWS_EACH = 3


def _pending(qualname: str) -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and getattr(t.get_coro(), "__qualname__", "") == qualname
    ]


async def _null_send(text: str) -> None:
    return None


async def _null_close(code: int, reason: str) -> None:
    return None


def _channels(redis_url: str, prefix: str) -> list[str]:
    return our_channels(redis_url, prefix)


def _clean(svc: Services) -> dict[str, Any]:
    """What the push layer still holds; all empty when nothing leaked."""
    return {
        "conns": len(svc.hub.conns),
        "interest": sorted(svc.hub.interest),
        "owners": sorted(svc.hub.owners),
        "refs": dict(svc.broker.refs),
    }


CLEAN = {"conns": 0, "interest": [], "owners": [], "refs": {}}


async def _populate(svc: Services) -> list[dict[str, Any]]:
    """Users who follow three owners each; some close friends, some hidden, a few posts."""
    rng = random.Random(7)
    users = [await svc.store.users.create(f"leak{n}") for n in range(N_USERS)]
    g, now = svc.store.graph, svc.store.clock.now_ms()
    for n, u in enumerate(users):
        others = [o for o in users if o is not u]
        for owner in rng.sample(others, FOLLOWS_EACH):
            await g.follow(u["id"], owner["id"], now)
            if n % 4 == 0:
                await g.set_close_friend(owner["id"], u["id"], True)
            if n % 7 == 0:
                await g.set_hidden(owner["id"], u["id"], True)
    # a few active items so owner caches and snapshots are not empty
    for n, u in enumerate(users[:10]):
        item = ActiveItem(1, ("public", "followers", "close_friends")[n % 3], now, now + 3_600_000)
        await svc.store.redis.zadd(svc.store.keys.items(u["id"]), {item.member(): item.expires_ms})
    return users


def _conn(user: dict[str, Any], svc: Services) -> Connection:
    return Connection(user, AsgiWire(_null_send), _null_close, svc.settings.ws_send_queue_bytes)


async def test_attach_detach_cycles_leave_nothing(settings: Settings) -> None:
    settings.ws_drain_timeout_s = 1.0
    svc = await Services.start(settings)
    try:
        assert await svc.broker.wait_ready(10)
        users = await _populate(svc)
        hub, rng, cycles = svc.hub, random.Random(11), 0

        # 1. one after another
        for _ in range(500):
            conn = _conn(rng.choice(users), svc)
            await hub.attach(conn)
            await hub.detach(conn)
            cycles += 1
        assert _clean(svc) == CLEAN

        # 2. concurrent waves: one wave detaches while the next attaches (60 at a time stays
        #    under the Redis pool's 100 connections; see test_connect_storm_is_served)
        previous: list[Connection] = []
        for _ in range(125):
            wave = [_conn(rng.choice(users), svc) for _ in range(60)]
            jobs = [hub.attach(c) for c in wave] + [hub.detach(c) for c in previous]
            rng.shuffle(jobs)
            await asyncio.gather(*jobs)
            previous = wave
            cycles += len(wave)
        await asyncio.gather(*(hub.detach(c) for c in previous))
        assert _clean(svc) == CLEAN

        # 3. detach while a graph.changed task for the connection is queued or running
        raced = 0
        for n in range(1000):
            user = rng.choice(users)
            other = rng.choice([u for u in users if u is not user])
            conn = _conn(user, svc)
            await hub.attach(conn)
            kind = ("following", "hidden", "close_friend")[n % 3]
            event = events.graph_changed(kind, other["id"], on=kind != "hidden")
            await svc.store.bus.tell(user["id"], event)
            deadline = time.monotonic() + 2
            while not _pending("Hub._apply_graph") and time.monotonic() < deadline:
                await asyncio.sleep(0)
            raced += bool(_pending("Hub._apply_graph"))
            for _ in range(n % 3):  # sometimes let the task start before detaching
                await asyncio.sleep(0)
            await hub.detach(conn)
            cycles += 1
        while _pending("Hub._apply_graph"):
            await asyncio.sleep(0.01)
        assert raced > 900
        assert _clean(svc) == CLEAN

        # 4. detach while the hub resyncs every connection (after a pub/sub gap)
        for _ in range(20):
            batch = [_conn(rng.choice(users), svc) for _ in range(50)]
            await asyncio.gather(*(hub.attach(c) for c in batch))
            resync = asyncio.create_task(hub.resync_all())
            await asyncio.sleep(0)
            await asyncio.gather(*(hub.detach(c) for c in batch))
            await resync
            cycles += len(batch)
        assert cycles == 10_000
        assert _clean(svc) == CLEAN

        assert not _pending("_resume")
        deadline, url = time.monotonic() + 5, settings.redis_url or ""
        while (left := _channels(url, settings.redis_prefix)) != canaries(svc.broker):
            assert time.monotonic() < deadline, left
            await asyncio.sleep(0.05)
    finally:
        await svc.close()


@pytest.fixture
def live(settings: Settings):
    with LiveServer(settings) as server:
        yield server


async def _wait_clean(live: LiveServer, redis_url: str, prefix: str) -> None:
    svc: Services = live.app.state.services
    want = canaries(svc.broker)
    deadline = time.monotonic() + 10
    while True:
        try:
            state = _clean(svc)
        except RuntimeError:  # changed size while the server thread worked; look again
            state = None
        if state == CLEAN and _channels(redis_url, prefix) == want:
            return
        assert time.monotonic() < deadline, (state, _channels(redis_url, prefix))
        await asyncio.sleep(0.05)


async def test_websocket_cycles_leave_nothing(live: LiveServer, settings: Settings) -> None:
    clients = [Client(live, f"ws{n}") for n in range(10)]
    for n, c in enumerate(clients):
        for k in (1, 2, 3):
            r = await c.http.put(f"/me/following/{clients[(n + k) % len(clients)].id}")
            assert r.status_code == 204
    await clients[1].post_photo(audience="public")

    async def cycle(n: int) -> None:
        client = clients[n % len(clients)]
        sock = await client.socket()
        how = n % 4
        if how == 0:
            await sock.close()
        elif how == 1:
            sock.ws.transport.abort()
        else:  # a graph edit (publishes graph.changed to this socket) then gone at once
            other = clients[(n + 5) % len(clients)]
            method = client.http.put if how == 2 else client.http.delete
            await method(f"/me/hidden/{other.id}" if how == 2 else f"/me/following/{other.id}")
            if how == 2:
                await other.http.put(f"/me/close-friends/{client.id}")
            sock.ws.transport.abort() if n % 8 < 4 else await sock.close()

    for start in range(0, 200, 20):
        await asyncio.gather(*(cycle(n) for n in range(start, start + 20)))
    await _wait_clean(live, settings.redis_url or "", settings.redis_prefix)
    for c in clients:
        await c.close()


async def test_connect_storm_is_served(live: LiveServer, settings: Settings) -> None:
    """300 sockets connecting at once (clients coming back after a restart) all get served."""
    alice = Client(live, "storm")
    results = await asyncio.gather(*(alice.socket() for _ in range(300)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in results:
        if not isinstance(r, BaseException):
            await r.close()
    await _wait_clean(live, settings.redis_url or "", settings.redis_prefix)
    await alice.close()
    assert not failed, f"{len(failed)} of 300 sockets failed: {failed[0]!r}"


@pytest.fixture
def tight_live(settings: Settings):
    small = dataclasses.replace(settings, ws_max_frame_bytes=1024, ws_ops_per_second=5)
    with LiveServer(small) as server:
        yield server


async def _closed_code(ws: Any, wait_s: float = 5.0) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes; (close code, events read before it)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait_s
    with pytest.raises(websockets.ConnectionClosed) as info:
        while time.monotonic() < deadline:
            data = orjson.loads(await asyncio.wait_for(ws.recv(), wait_s))
            got.extend(data if isinstance(data, list) else [data])
    assert info.value.rcvd is not None, "closed without a close frame from the server"
    return info.value.rcvd.code, got


async def test_frame_too_big_closes_1009(tight_live: LiveServer, settings: Settings) -> None:
    alice = Client(tight_live, "alice")
    sock = await alice.socket()
    padded = orjson.dumps({"op": "ping", "pad": "x" * 900}).decode()
    assert len(padded) < 1024
    await sock.send(op="ping", pad="x" * 900)  # under the limit: fine
    assert (await sock.next("pong"))["type"] == "pong"
    await sock.ws.send(orjson.dumps({"op": "ping", "pad": "x" * 2000}).decode())
    code, _ = await _closed_code(sock.ws)
    assert code == 1009
    await _wait_clean(tight_live, settings.redis_url or "", settings.redis_prefix)
    await alice.close()


async def test_op_flood_closes_1008(tight_live: LiveServer, settings: Settings) -> None:
    alice = Client(tight_live, "alice")
    sock = await alice.socket()
    for _ in range(3):  # a burst within the bucket (2 x rate) is fine
        await sock.send(op="ping")
    for _ in range(3):
        await sock.next("pong")
    await asyncio.sleep(1.0)
    for _ in range(40):
        try:
            await sock.send(op="ping")
        except websockets.ConnectionClosed:
            break
    code, got = await _closed_code(sock.ws)
    assert code == 1008
    assert len([e for e in got if e["type"] == "pong"]) <= 10  # at most the burst got through
    await _wait_clean(tight_live, settings.redis_url or "", settings.redis_prefix)
    await alice.close()
