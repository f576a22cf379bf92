"""Push on a Redis Cluster: sharded pub/sub (SSUBSCRIBE/SPUBLISH) per primary.

Always run, on the suite's test cluster (`cluster_url`) for what leaves it as it
was, and on a cluster of this module's own (`own_cluster`) for a slot migration
and a primary's SIGKILL. Every app here talks to a `redis+cluster://` URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from redis.crc import key_slot

from server.core.keys import Keys
from server.core.settings import Settings
from server.push.sharded import ShardedBroker, parse_slots
from server.services import Services
from tests.cluster import Cluster, running_cluster
from tests.live import Client, LiveServer, Socket
from tests.pubsub import canaries, our_channels

Node = tuple[str, int]


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3+3 cluster for this module's destructive tests (migration, SIGKILL)."""
    with running_cluster(tmp_path_factory.mktemp("own-cluster")) as cluster:
        yield cluster


def _client(node: Node) -> redis.Redis:
    return redis.Redis(host=node[0], port=node[1], socket_timeout=5)


def _nodes(url: str) -> list[Node]:
    return [(h, int(p)) for h, p in (part.split(":") for part in url.split("://")[1].split(","))]


def _owners(url: str) -> dict[int, Node]:
    """Slot → primary, read from the first node of `url` that answers."""
    for node in _nodes(url):
        try:
            with _client(node) as r:
                return parse_slots(r.execute_command("CLUSTER", "SLOTS"))
        except redis.RedisError:
            continue
    raise AssertionError("no node answered CLUSTER SLOTS")


def _slot(name: str) -> int:
    return int(key_slot(name.encode()))


def _broker(live: LiveServer) -> ShardedBroker:
    broker = live.app.state.services.broker
    assert isinstance(broker, ShardedBroker)
    return broker


async def _wait(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out: {what} ({_last(check)})"
        await asyncio.sleep(0.05)
    return found


async def _ready(broker: ShardedBroker) -> None:
    """Every link up (polled: the broker lives on the server thread's event loop)."""
    await _wait(lambda: broker.readiness() == "ok", 10, "the broker is ready")


def _last(check: Any) -> Any:
    """What the check's broker says now, for a failure message."""
    broker = getattr(check, "broker", None)
    return broker.readiness() if broker is not None else None


def _on(settings: Settings, url: str) -> Settings:
    return dataclasses.replace(settings, redis_url=url)


async def _owner_per_primary(live: LiveServer, url: str, keys: Keys) -> dict[Node, Client]:
    """One owner (a new user) whose stories channel's slot is on each primary."""
    owners = _owners(url)
    found: dict[Node, Client] = {}
    n = 0
    while len(found) < len(set(owners.values())):
        client = Client(live, f"own{n}")
        n += 1
        found.setdefault(owners[_slot(keys.stories_channel(client.id))], client)
        assert n < 60, "could not place an owner on every primary"
    return found


async def test_story_new_reaches_followers_of_owners_on_every_primary_and_only_that_shard(
    settings: Settings, cluster_url: str
):
    settings = _on(settings, cluster_url)
    keys = Keys(settings.redis_prefix)
    with LiveServer(settings) as live:
        broker = _broker(live)
        await _ready(broker)
        assert len(broker.links) == 3 and len(set(broker.canary_channels)) == 3
        by_node = await _owner_per_primary(live, cluster_url, keys)
        fan = Client(live, "fan")
        for owner in by_node.values():
            assert (await fan.http.put(f"/me/following/{owner.id}")).status_code in (200, 204)
        sock = await fan.socket()
        all_nodes = _nodes(cluster_url)
        classic_before = {n: _stat(n, "publish") for n in all_nodes}
        for node, owner in by_node.items():
            channel = keys.stories_channel(owner.id)
            for other in all_nodes:  # the channel is subscribed on its shard only
                with _client(other) as r:
                    count = dict(_pairs(r.execute_command("PUBSUB", "SHARDNUMSUB", channel)))
                    assert count.get(channel.encode(), 0) == (1 if other == node else 0)
            with _client(node) as r:  # a subscriber of our own on that shard hears the post
                spy = r.pubsub()
                spy.ssubscribe(channel)
                spy.get_message(timeout=2)  # the confirmation
                item = await owner.post_photo()
                new = await sock.next("story.new")
                assert new["item"]["id"] == item["id"]
                msg = spy.get_message(timeout=2)
                assert msg and msg["type"] == "smessage" and msg["channel"] == channel.encode()
                spy.close()
        assert {n: _stat(n, "publish") for n in all_nodes} == classic_before  # no classic PUBLISH
        await sock.close()


def _pairs(reply: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(reply[::2], reply[1::2], strict=True))


def _stat(node: Node, command: str) -> int:
    """Calls of `command` on `node` so far (INFO commandstats)."""
    with _client(node) as r:
        stats = r.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


async def test_a_killed_pubsub_link_comes_back_with_a_fresh_snapshot(
    settings: Settings, cluster_url: str
):
    settings = _on(settings, cluster_url)
    keys = Keys(settings.redis_prefix)
    with LiveServer(settings) as live:
        broker = _broker(live)
        await _ready(broker)
        owner, fan = Client(live, "owner"), Client(live, "fan")
        await fan.http.put(f"/me/following/{owner.id}")
        sock = await fan.socket()
        node = _owners(cluster_url)[_slot(keys.stories_channel(owner.id))]
        link = broker.links[node]
        before = link.reconnects
        with _client(node) as r:
            assert r.client_kill_filter(_type="pubsub") >= 1
        await sock.next("tray.snapshot", wait_s=10)  # the resubscribed link's resync
        await _wait(lambda: link.reconnects > before, 10, "the link reconnected")
        await _wait(lambda: broker.readiness() == "ok", 10, "readiness back")
        async with httpx.AsyncClient() as http:
            assert (await http.get(live.url + "/readyz")).status_code == 200
        item = await owner.post_photo()
        assert (await sock.next("story.new", wait_s=10))["item"]["id"] == item["id"]
        await sock.close()


def _migrate(url: str, slot: int, src: Node, dst: Node) -> None:
    """Move `slot` and its keys from primary `src` to primary `dst` (CLUSTER SETSLOT, MIGRATE)."""
    with _client(src) as s, _client(dst) as d:
        src_id, dst_id = s.execute_command("CLUSTER", "MYID"), d.execute_command("CLUSTER", "MYID")
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            s.execute_command("MIGRATE", dst[0], dst[1], "", 0, 5000, "KEYS", *keys)
        d.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    for node in set(_owners(url).values()) - {src, dst}:
        with _client(node) as r:
            r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def test_slot_migration_moves_the_subscription_and_the_socket_gets_the_next_post(
    settings: Settings, own_cluster: Cluster
):
    url = own_cluster.url
    settings = _on(settings, url)
    keys = Keys(settings.redis_prefix)
    with LiveServer(settings) as live:
        broker = _broker(live)
        await _ready(broker)
        owner, fan = Client(live, "owner"), Client(live, "fan")
        await fan.http.put(f"/me/following/{owner.id}")
        first = await owner.post_photo()
        sock = await fan.socket()
        assert [e["owner"]["id"] for e in sock.snapshot] == [owner.id]
        channel = keys.stories_channel(owner.id)
        slot = _slot(channel)
        owners = _owners(url)
        src = owners[slot]
        dst = next(n for n in set(owners.values()) if n != src)
        assert channel in broker.links[src].refs
        _migrate(url, slot, src, dst)
        snapshot = await sock.next("tray.snapshot", wait_s=10)  # resubscribed on `dst`
        assert [e["owner"]["id"] for e in snapshot["items"]] == [owner.id]
        assert channel in broker.links[dst].refs and channel not in broker.links[src].refs
        with _client(dst) as r:
            assert r.execute_command("PUBSUB", "SHARDNUMSUB", channel)[1] == 1
        second = await owner.post_photo()
        new = await sock.next("story.new", wait_s=10)
        assert new["item"]["id"] == second["id"] != first["id"]
        await _wait(lambda: broker.readiness() == "ok", 10, "readiness after the migration")
        await sock.close()


async def test_a_killed_primary_fails_over_readiness_dips_and_sockets_converge(
    settings: Settings, own_cluster: Cluster
):
    url = own_cluster.url
    settings = _on(settings, url)
    keys = Keys(settings.redis_prefix)
    with LiveServer(settings) as live:
        broker = _broker(live)
        await _ready(broker)
        owner, fan = Client(live, "owner"), Client(live, "fan")
        await fan.http.put(f"/me/following/{owner.id}")
        sock = await fan.socket()
        slot = _slot(keys.stories_channel(owner.id))
        victim = _owners(url)[slot]
        await _wait(lambda: _replica_synced(own_cluster, victim), 30, "the replica synced")
        os.kill(own_cluster.pids[own_cluster.ports.index(victim[1])], signal.SIGKILL)
        await _wait(lambda: broker.readiness() != "ok", 10, "readiness dipped")
        async with httpx.AsyncClient() as http:
            assert (await http.get(live.url + "/readyz")).status_code == 503
        await _wait(lambda: broker.readiness() == "ok", 30, "readiness after the failover")
        assert victim not in broker.links
        await _until_snapshot(sock, 10)
        deadline = time.monotonic() + 20
        while True:  # the data client may still hold the old slot map for a moment
            try:
                item = await owner.post_photo()
                break
            except AssertionError:
                assert time.monotonic() < deadline, "posting never recovered"
                await asyncio.sleep(0.5)
        assert (await sock.next("story.new", wait_s=10))["item"]["id"] == item["id"]
        await sock.close()


def _replica_synced(cluster: Cluster, primary: Node) -> bool:
    """True once a replica of `primary` has its link up (so it may take over)."""
    for port in cluster.ports:
        with _client(("127.0.0.1", port)) as r:
            info = r.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == primary[1]:
                r.config_set("cluster-replica-validity-factor", 0)  # however long it lagged
                return bool(info["master_link_status"] == "up")
    return False


async def _until_snapshot(sock: Socket, wait_s: float) -> None:
    """The fresh snapshot of a resync arrived (or had arrived) on `sock`."""
    if any(e["type"] == "tray.snapshot" for e in sock.seen_events):
        return
    await sock.next("tray.snapshot", wait_s=wait_s)


async def test_audience_change_and_delete_publish_from_their_scripts_on_the_cluster(
    settings: Settings, cluster_url: str
):
    # set_audience.lua and end_item.lua SPUBLISH on the owner's slot, as post_item.lua does
    settings = _on(settings, cluster_url)
    with LiveServer(settings) as live:
        await _ready(_broker(live))
        owner, fan = Client(live, "owner"), Client(live, "fan")
        await fan.http.put(f"/me/following/{owner.id}")
        item = await owner.post_photo(audience="public")
        sock, own = await fan.socket(), await owner.socket()
        r = await owner.http.patch(f"/stories/{item['id']}", json={"audience": "close_friends"})
        assert r.status_code == 200
        assert (await sock.next("tray.remove"))["owner_id"] == owner.id
        r = await owner.http.patch(f"/stories/{item['id']}", json={"audience": "public"})
        assert r.status_code == 200
        assert (await sock.next("tray.update"))["entry"]["owner"]["id"] == owner.id
        assert (await owner.http.delete(f"/stories/{item['id']}")).status_code == 204
        assert (await sock.next("story.removed"))["item_id"] == item["id"]
        assert (await own.next("story.removed"))["item_id"] == item["id"]  # the owner's inbox
        await sock.close()
        await own.close()


async def test_a_release_right_after_an_acquire_leaves_no_subscription(
    settings: Settings, cluster_url: str
):
    svc = await Services.start(_on(settings, cluster_url))
    try:
        broker = svc.broker
        assert isinstance(broker, ShardedBroker) and await broker.wait_ready(10)
        names = [svc.store.keys.stories_channel(f"u_{n:03d}") for n in range(30)]  # 3 nodes
        assert len({broker.owners[_slot(n)] for n in names}) == 3
        for _ in range(20):
            acquiring = asyncio.create_task(broker.acquire(*names))
            await asyncio.sleep(0)  # the acquire has counted, its links not yet confirmed
            broker.release(*names)
            await acquiring
        assert broker.refs == {} and all(not link.refs for link in broker.links.values())
        deadline = time.monotonic() + 5
        while (left := our_channels(cluster_url, settings.redis_prefix)) != canaries(broker):
            assert time.monotonic() < deadline, left
            await asyncio.sleep(0.05)
    finally:
        await svc.close()
