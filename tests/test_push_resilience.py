"""Push under failure: Redis restarts, a deaf pub/sub link, a slow reader, a snapshot race.

Each test that breaks Redis runs on its own embedded redis-server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from io import BytesIO

import orjson
import pytest
import redis
import websockets
from PIL import Image

from server.push.wire import UvicornWire
from server.store.embedded_redis import EmbeddedRedis
from tests.conftest import sync_redis
from tests.live import Client, LiveServer
from tests.pubsub import publish_command


def comparable(entries):
    """A tray as {owner id: (has_unseen, item_count, first_unseen_id)}."""
    return {o: (e["has_unseen"], e["item_count"], e["first_unseen_id"]) for o, e in entries.items()}


async def true_tray(client: Client):
    items = (await client.http.get("/tray")).json()["items"]
    return comparable({e["owner"]["id"]: e for e in items})


async def converged(sock, client: Client, wait_s: float = 10.0) -> None:
    """The socket's tray (snapshot + deltas) equals GET /tray within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        await sock.drain(0.2)
        if comparable(sock.tray()) == await true_tray(client):
            return
        assert time.monotonic() < deadline, (comparable(sock.tray()), await true_tray(client))


@pytest.fixture
def own_redis(tmp_path):
    embedded = EmbeddedRedis(tmp_path / "own-redis")
    embedded.start()
    yield embedded
    embedded.stop()


async def test_redis_restart_mid_stream_every_client_ends_with_the_true_tray(
    settings, own_redis, tmp_path
):
    settings = dataclasses.replace(settings, redis_url=own_redis.url)
    with LiveServer(settings) as live:
        owners = [Client(live, f"owner{n}") for n in range(2)]
        fans = [Client(live, f"fan{n}") for n in range(3)]
        for fan in fans:
            for owner in owners:
                await fan.http.put(f"/me/following/{owner.id}")
        socks = [await fan.socket() for fan in fans]
        first = await owners[0].post_photo()
        await asyncio.sleep(1.2)  # appendfsync everysec: let the AOF catch up
        own_redis.proc.kill()
        own_redis.proc.wait()
        down = await fans[0].http.post(f"/stories/{first['id']}/seen")
        assert down.status_code == 503 and down.headers["retry-after"]
        restarted = EmbeddedRedis(tmp_path / "own-redis")
        own_redis.stop()
        restarted.start()
        try:
            await owners[1].post_photo()
            assert (await fans[1].http.post(f"/stories/{first['id']}/seen")).status_code == 204
            for sock, fan in zip(socks, fans, strict=True):
                await converged(sock, fan)
            assert live.app.state.services.broker.reconnects >= 1
            assert any(e["type"] == "tray.snapshot" for e in socks[0].seen_events[2:])
        finally:
            restarted.stop()


async def test_deaf_pubsub_link_is_detected_and_healed(settings, own_redis):
    settings = dataclasses.replace(settings, redis_url=own_redis.url)
    with LiveServer(settings) as a, LiveServer(settings) as b:
        owner, fan = Client(a, "owner"), Client(b, "fan")
        await fan.http.put(f"/me/following/{owner.id}")
        sock = await fan.socket()
        killed = redis.Redis.from_url(own_redis.url).client_kill_filter(_type="pubsub")
        assert killed >= 2
        started = time.monotonic()
        while True:
            await owner.post_photo()
            try:
                await sock.next("story.new", wait_s=0.5)
                break
            except TimeoutError:
                assert time.monotonic() - started < 5, "a process stayed deaf"
        async with websockets.connect(f"{a.ws_url}?token={owner.token}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "hello"
        for server in (a, b):
            broker = server.app.state.services.broker
            deadline = time.monotonic() + 5
            while broker.readiness() != "ok":
                assert time.monotonic() < deadline, broker.readiness()
                await asyncio.sleep(0.1)


async def test_slow_reader_is_closed_1013_and_never_delays_the_others(settings):
    settings = dataclasses.replace(settings, ws_send_queue_bytes=256 * 1024)
    with LiveServer(settings) as live:
        owner = Client(live, "owner")
        fast = await owner.socket()
        slow = await websockets.connect(
            f"{live.ws_url}?token={owner.token}", max_queue=1, max_size=None
        )
        hub = live.app.state.services.hub
        assert all(isinstance(c.wire, UvicornWire) for c in hub.conns)  # its backpressure path
        store = live.app.state.services.store
        publisher = sync_redis(settings.redis_url)
        publish = publish_command(settings.redis_url)
        channel = store.keys.inbox_channel(owner.id)
        lags = []
        for batch in range(100):
            pipe = publisher.pipeline(transaction=False)
            for n in range(50):
                text = orjson.dumps(
                    {"n": batch * 50 + n, "at": time.time(), "pad": secrets.token_urlsafe(3000)}
                ).decode()
                event = {"type": "story.reply", "item_id": "x.1", "user": owner.user, "text": text}
                pipe.execute_command(publish, channel, orjson.dumps(event))
            pipe.execute()
            while True:
                try:
                    reply = await fast.next("story.reply", wait_s=2)
                except TimeoutError:
                    break
                body = orjson.loads(reply["text"])
                lags.append(time.time() - body["at"])
                if body["n"] == batch * 50 + 49:
                    break
        assert len(lags) == 5000
        assert max(lags) < 0.2, max(lags)
        assert hub.out.closed_slow == 1
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(slow.recv(), 5)
        assert info.value.rcvd is None or info.value.rcvd.code == 1013
        assert all(c.outbox.size <= settings.ws_send_queue_bytes for c in hub.conns)
        await fast.close()


def tiny_jpeg() -> bytes:
    out = BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 90)).save(out, "JPEG")
    return out.getvalue()


async def test_clients_connecting_during_a_burst_of_posts_end_with_the_true_tray(settings):
    with LiveServer(settings) as live:
        owners = [Client(live, f"creator{n}") for n in range(2)]
        fans = [Client(live, f"viewer{n}") for n in range(10)]
        for fan in fans:
            for owner in owners:
                await fan.http.put(f"/me/following/{owner.id}")
        body = tiny_jpeg()

        async def burst(owner: Client) -> None:
            for _ in range(60):
                r = await owner.http.post("/stories", files={"media": ("t.jpg", body)})
                assert r.status_code == 201

        async def join_late(fan: Client, delay: float):
            await asyncio.sleep(delay)
            return await fan.socket()

        results = await asyncio.gather(
            *(burst(o) for o in owners), *(join_late(f, n * 0.08) for n, f in enumerate(fans))
        )
        socks = results[len(owners) :]
        for sock, fan in zip(socks, fans, strict=True):
            await converged(sock, fan)
            assert sock.tray()[owners[0].id]["item_count"] == 60


async def test_socket_opened_while_redis_is_down_closes_1013(settings, own_redis, tmp_path):
    settings = dataclasses.replace(settings, redis_url=own_redis.url)
    with LiveServer(settings) as live:
        alice = Client(live, "alice")
        own_redis.proc.kill()
        own_redis.proc.wait()
        async with websockets.connect(f"{live.ws_url}?token={alice.token}") as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        own_redis.stop()
        restarted = EmbeddedRedis(tmp_path / "own-redis")
        restarted.start()
        try:
            deadline = time.monotonic() + 10
            while True:  # the client pool reconnects on first use
                try:
                    sock = await alice.socket()
                    break
                except (websockets.ConnectionClosed, AssertionError):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
            await sock.close()
        finally:
            restarted.stop()
