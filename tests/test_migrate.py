"""A Redis written before the bucketed indexes: its single-key indexes move at startup."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from server.app import create_app
from server.core.keys import BUCKETS, Keys, bucket
from server.store.client import redis_client
from server.store.migrate import move_legacy_indexes
from tests.conftest import Api, sync_redis


def _login(client: TestClient, handle: str) -> Api:
    r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
    return Api(client, r.json()["token"], r.json()["user"])


def _to_legacy_layout(r, keys: Keys) -> None:
    """Rewrite the bucketed indexes as the single keys an older version wrote."""
    old = dict(
        zip(("expire", "owners", "gc"), keys.legacy_global_indexes(), strict=True)
    )  # fmt: skip
    for n in range(BUCKETS):
        for name, new in (("expire", keys.expiry_schedule(n)), ("owners", keys.active_owners(n)),
                          ("gc", keys.media_gc_schedule(n))):  # fmt: skip
            entries = r.zrange(new, 0, -1, withscores=True)
            if entries:
                r.zadd(old[name], dict(entries))
            r.delete(new)


def test_an_upgraded_server_keeps_old_rings_and_expires_old_items(settings, clock):
    keys = Keys(settings.redis_prefix)
    with TestClient(create_app(settings, clock)) as client:
        bob, alice = _login(client, "bob"), _login(client, "alice")
        alice.follow(bob)
        item = bob.post_media("rocket.jpg", data={"lifetime_h": "6"}).json()
    r = sync_redis(settings.redis_url)
    try:
        _to_legacy_layout(r, keys)
        expire, owners, _ = keys.legacy_global_indexes()
        assert r.zcard(expire) == 1 and r.zcard(owners) == 1
        with TestClient(create_app(settings, clock)) as client:
            alice, bob = _login(client, "alice"), _login(client, "bob")
            assert [e["owner"]["id"] for e in alice.get("/tray").json()["items"]] == [bob.id]
            assert not r.exists(expire) and not r.exists(owners)
            assert r.zscore(keys.expiry_schedule_of(item["id"]), item["id"]) is not None
            clock.advance(6 * 3600 * 1000 + 1)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not bob.get("/me/archive").json()["items"]:
                time.sleep(0.05)
            assert bob.get("/me/archive").json()["items"][0]["status"] == "expired"
    finally:
        r.close()


async def test_moving_keeps_the_later_expiry_and_entries_already_moved(redis_url, settings):
    client, keys = redis_client(redis_url), Keys(settings.redis_prefix)
    expire, owners, gc = keys.legacy_global_indexes()
    try:
        await client.zadd(owners, {"ann": 500, "ben": 100})
        await client.zadd(keys.active_owners_of("ben"), {"ben": 900})  # posted since the upgrade
        await client.zadd(expire, {"ann.1": 500, "ann.2": 600})
        await client.zadd(keys.expiry_schedule_of("ann.2"), {"ann.2": 50})  # made due since
        await client.zadd(gc, {"ann.0": 10})
        assert await move_legacy_indexes(client, keys) == 5
        assert await client.zscore(keys.active_owners(bucket("ann")), "ann") == 500
        assert await client.zscore(keys.active_owners_of("ben"), "ben") == 900
        assert await client.zscore(keys.expiry_schedule_of("ann.1"), "ann.1") == 500
        assert await client.zscore(keys.expiry_schedule_of("ann.2"), "ann.2") == 50
        assert await client.zscore(keys.media_gc_schedule_of("ann.0"), "ann.0") == 10
        assert not await client.exists(expire, owners, gc)
        assert await move_legacy_indexes(client, keys) == 0
    finally:
        await client.aclose()
