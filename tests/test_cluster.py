"""The data path on a Redis Cluster of 3 primaries + 3 replicas (`tests/cluster.py`).

Always run: every app here talks to the test cluster through a `redis+cluster://`
URL, whatever `STORIES_TEST_REDIS` says. A representative set of the HTTP suite
(post, share, tray over many owners on many slots, seen, viewers, delete, expiry
sweep, rate limit, idempotency, rollout), plus what only a cluster shows: owners'
keys and the buckets of the global indexes really are on more than one node, a
script cache flushed on every node costs no write, and two processes' sweepers
split the buckets between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from starlette.testclient import TestClient

from server.app import create_app
from server.core.clock import ManualClock
from server.core.keys import BUCKETS, Keys, bucket
from server.core.settings import Settings
from server.store.client import cluster_nodes, is_cluster_url, redis_client
from tests.conftest import Api, assert_problem, sync_redis

OWNERS = 24  # followed owners, on (almost surely) 24 different slots over 3 primaries


@pytest.fixture
def settings(settings: Settings, cluster_url: str) -> Settings:
    """The suite's settings, on the test cluster."""
    return dataclasses.replace(settings, redis_url=cluster_url)


@pytest.fixture
def cluster(cluster_url: str) -> Iterator[Any]:
    """A blocking `RedisCluster` client of the test cluster, for checks."""
    client = sync_redis(cluster_url)
    yield client
    client.close()


def _node_of(cluster: Any, key: str) -> str:
    node = cluster.get_node_from_key(key)
    return f"{node.host}:{node.port}"


def _wait(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return found


def test_cluster_urls_parse_and_refuse_what_is_not_host_port():
    assert cluster_nodes("redis+cluster://a:7000,10.0.0.2:7001") == [
        ("a", 7000),
        ("10.0.0.2", 7001),
    ]
    assert is_cluster_url("redis+cluster://a:1") and not is_cluster_url("redis://a:1")
    for bad in ("redis+cluster://", "redis+cluster://a", "redis+cluster://a:1/0",
                "redis+cluster://a:1,b", "redis+cluster://a:x", "redis+cluster://u:p@a:1",
                "redis://a:1"):  # fmt: skip
        with pytest.raises(ValueError):
            cluster_nodes(bad)


async def test_the_client_is_a_cluster_client_with_every_node(cluster_url: str):
    client = redis_client(cluster_url)
    try:
        assert isinstance(client, RedisCluster)
        assert await client.ping()
        await client.initialize()
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()
    roles = []
    for host, port in cluster_nodes(cluster_url):
        with redis.Redis(host=host, port=port) as node:
            roles.append(node.info("replication")["role"])
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3


def test_buckets_and_owners_are_spread_over_the_primaries(cluster):
    keys = Keys("st1:")
    bucket_nodes = {_node_of(cluster, keys.expiry_schedule(n)) for n in range(BUCKETS)}
    assert len(bucket_nodes) == 3, "16 buckets over 3 primaries: every primary holds some"
    owners = [f"u_{n:04d}" for n in range(OWNERS)]
    assert len({bucket(o) for o in owners}) > 8
    assert len({_node_of(cluster, keys.items(o)) for o in owners}) == 3


def test_post_tray_seen_viewers_delete_over_many_slots(login, client, cluster, settings):
    # the sharded broker has a link up on every primary, each hearing its own canary
    assert _wait(lambda: client.get("/readyz").status_code == 200)
    viewer = login("viewer")
    owners = [login(f"owner{n:02d}") for n in range(OWNERS)]
    posted = {}
    for owner in owners:
        viewer.follow(owner)
        r = owner.post_media("rocket.jpg", data={"caption": owner.user["handle"]})
        assert r.status_code == 201, r.text
        posted[owner.id] = r.json()["id"]
    keys = Keys(settings.redis_prefix)
    nodes = {_node_of(cluster, keys.items(o.id)) for o in owners}
    assert len(nodes) > 1, "the owners' keys are on more than one node"
    assert len({bucket(o.id) for o in owners}) > 1

    tray = viewer.get("/tray").json()["items"]
    assert {e["owner"]["id"] for e in tray} == set(posted)
    assert all(e["has_unseen"] and e["first_unseen_id"] == posted[e["owner"]["id"]] for e in tray)
    assert all(e["owner"]["handle"].startswith("owner") for e in tray)

    first, second = owners[0], owners[1]
    assert viewer.post(f"/stories/{posted[first.id]}/seen").status_code == 204
    entry = {e["owner"]["id"]: e for e in viewer.get("/tray").json()["items"]}
    assert entry[first.id]["has_unseen"] is False and entry[second.id]["has_unseen"] is True
    page = first.get(f"/stories/{posted[first.id]}/viewers").json()
    assert page["count"] == 1 and page["items"][0]["user"]["id"] == viewer.id
    assert first.get(f"/stories/{posted[first.id]}").json()["view_count"] == 1

    assert second.delete(f"/stories/{posted[second.id]}").status_code == 204
    after = {e["owner"]["id"] for e in viewer.get("/tray").json()["items"]}
    assert after == set(posted) - {second.id}
    assert_problem(viewer.get(f"/stories/{posted[second.id]}"), 404, "not-found")
    archive = second.get("/me/archive").json()["items"]
    assert [a["status"] for a in archive] == ["deleted"]


def test_a_share_lives_on_the_sharers_slot_and_ends_with_its_source(login, cluster, settings):
    keys = Keys(settings.redis_prefix)
    names = [f"sharer{n}" for n in range(40)]
    source_owner = login("source")
    sharer = next(  # a sharer on another node than the source, so the share crosses nodes
        api
        for name in names
        if _node_of(cluster, keys.items((api := login(name)).id))
        != _node_of(cluster, keys.items(source_owner.id))
    )
    reader = login("reader")
    sharer.follow(source_owner)
    reader.follow(sharer)
    original = source_owner.post_media("coffee.png", data={"audience": "public"}).json()
    shared = sharer.post(f"/stories/{original['id']}/share", json={"caption": "see"}).json()
    tray = reader.get("/tray").json()["items"]
    assert [(e["owner"]["id"], e["first_unseen_id"]) for e in tray] == [(sharer.id, shared["id"])]
    assert source_owner.delete(f"/stories/{original['id']}").status_code == 204
    assert reader.get("/tray").json()["items"] == []
    assert_problem(reader.get(f"/stories/{shared['id']}"), 404, "not-found")


def test_expiry_is_swept_bucket_by_bucket(login, client, clock, cluster, settings):
    keys = Keys(settings.redis_prefix)
    owners = [login(f"exp{n:02d}") for n in range(8)]
    items = [o.post_media("rocket.jpg", data={"lifetime_h": "6"}).json() for o in owners]
    scheduled = sum(cluster.zcard(keys.expiry_schedule(n)) for n in range(BUCKETS))
    assert scheduled == len(items)
    assert len({bucket(i["id"]) for i in items}) > 1
    clock.advance(6 * 3600 * 1000 + 1)
    for owner in owners:
        _wait(lambda o=owner: o.get("/me/archive").json()["items"])
        assert owner.get("/me/archive").json()["items"][0]["status"] == "expired"
    assert sum(cluster.zcard(keys.expiry_schedule(n)) for n in range(BUCKETS)) == 0
    assert _wait(lambda: sum(cluster.zcard(keys.active_owners(n)) for n in range(BUCKETS)) == 0)
    assert sum(cluster.zcard(keys.media_gc_schedule(n)) for n in range(BUCKETS)) == len(items)


def test_rate_limit_idempotency_and_rollout(settings, cluster_url):
    tight = dataclasses.replace(settings, posts_per_minute=3, admin_token="cluster-admin")
    real_ms = time.time_ns() // 1_000_000 - 60_000  # tokens are checked against real time
    clock = ManualClock(real_ms - real_ms % 60_000 + 15_000)  # 15 s into a clock minute
    with TestClient(create_app(tight, clock)) as client:
        r = client.post("/api/v1/auth/dev-login", json={"handle": "limited"})
        api = Api(client, r.json()["token"], r.json()["user"])
        first = api.post_media("rocket.jpg", headers={"Idempotency-Key": "once"})
        again = api.post_media("rocket.jpg", headers={"Idempotency-Key": "once"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        assert len(api.get(f"/users/{api.id}/stories").json()["items"]) == 1
        assert api.post_media("rocket.jpg").status_code == 201  # the 3rd post (a replay counts)
        limited = api.post_media("rocket.jpg")
        assert_problem(limited, 429, "rate-limited")
        assert int(limited.headers["retry-after"]) > 0
        clock.advance(60_000)
        admin = {"Authorization": "Bearer cluster-admin"}
        gate = {"open": False, "allow": ["someone_else"]}
        assert client.put("/api/v1/admin/rollout", json=gate, headers=admin).status_code == 200
        assert_problem(api.post_media("rocket.jpg"), 403, "stories-not-enabled")
        assert (
            client.put("/api/v1/admin/rollout", json={"open": True}, headers=admin).status_code
            == 200
        )
        assert api.post_media("rocket.jpg").status_code == 201


def _flush_scripts(cluster_url: str) -> None:
    """SCRIPT FLUSH on every node, as after a restart or a failover to a cold replica."""
    for host, port in cluster_nodes(cluster_url):
        with redis.Redis(host=host, port=port) as node:
            node.script_flush()


def test_a_flushed_script_cache_costs_no_write(login, cluster_url):
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    _flush_scripts(cluster_url)
    item = bob.post_media("rocket.jpg").json()  # post_item.lua in a pipeline: NOSCRIPT, rerun
    _flush_scripts(cluster_url)
    assert alice.post(f"/stories/{item['id']}/seen").status_code == 204  # seen_max.lua
    _flush_scripts(cluster_url)
    [entry] = alice.get("/tray").json()["items"]  # tray_scan.lua, one per slot
    assert entry["owner"]["id"] == bob.id and entry["has_unseen"] is False
    assert bob.get(f"/stories/{item['id']}").json()["view_count"] == 1
    assert [i["id"] for i in alice.get(f"/users/{bob.id}/stories").json()["items"]] == [item["id"]]


def _store(settings: Settings, data_dir: Path) -> Any:
    """A `Store` on the cluster as the lifespan builds it, without the background tasks."""
    from server.core.signing import MediaSigner
    from server.store.graph import Graph
    from server.store.scripts import Scripts
    from server.store.storage import LocalStorage
    from server.store.store import Store
    from server.store.users import UserStore

    assert settings.redis_url
    client, keys = redis_client(settings.redis_url), Keys(settings.redis_prefix)
    return Store(client, keys, Scripts(client), UserStore(client, keys), Graph(client, keys),
                 MediaSigner(b"k"), LocalStorage(data_dir), ManualClock(), settings)  # fmt: skip


async def test_two_sweepers_share_the_buckets(settings: Settings, tmp_path: Path):
    from server.stories.sweeper import Sweeper
    from server.stories.writer import StoryWriter

    stores = [_store(settings, tmp_path / name) for name in ("one", "two")]
    one, two = (Sweeper(s, StoryWriter(s)) for s in stores)
    try:
        held = await one._lock()
        assert held == list(range(BUCKETS))
        assert await two._lock() == [], "a bucket is swept by one process at a time"
        await one._unlock(held[: BUCKETS // 2])
        assert await two._lock() == held[: BUCKETS // 2]
        assert await one.sweep_once() == 0  # it still holds the other half: nothing to take
        await two._unlock(held)  # frees only its own half
        assert await one._lock() == held[: BUCKETS // 2]
        await one._unlock(held)
        await asyncio.gather(one.sweep_once(), two.sweep_once())
        assert await two._lock() == held, "a pass frees every lock it took"
        await two._unlock(held)
    finally:
        for s in stores:
            await s.redis.aclose()
