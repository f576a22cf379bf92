"""`tray_scan.lua` computes rings inside Redis; they must equal `core/tray.py`'s pure rules."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.core.audience import Relation
from server.core.clock import ManualClock, rfc3339
from server.core.keys import Keys, item_id
from server.core.settings import Settings
from server.core.signing import MediaSigner
from server.core.tray import ActiveItem, order_tray, ring, visible_items
from server.store.client import redis_client
from server.store.graph import Graph
from server.store.scripts import Scripts
from server.store.storage import LocalStorage
from server.store.store import Store
from server.store.users import UserStore
from server.stories.reader import StoryReader

NOW = 1_800_000_000_000
OWNERS = ["ann", "ben", "cat", "dov"]

items_st = st.lists(
    st.tuples(
        st.sampled_from(["public", "followers", "close_friends"]),
        st.integers(-5_000, 5_000),  # created offset, ms
        st.integers(-2_000, 50_000),  # expires offset from NOW, ms (<= 0: expired)
    ),
    max_size=5,
)
world_st = st.fixed_dictionaries(
    {
        o: st.tuples(items_st, st.integers(0, 6), st.booleans(), st.booleans())
        for o in OWNERS  # items, seen-up-to, viewer is close friend, viewer hidden
    }
)


@pytest.fixture(params=["single", "cluster"])
def reader(request, redis_url, tmp_path):
    """StoryReaders on one Redis (one script call for all owners) or on the test
    Cluster (one call per slot)."""
    url = request.getfixturevalue("cluster_url") if request.param == "cluster" else redis_url
    made = []

    def make():
        prefix = f"ts{uuid.uuid4().hex[:8]}:"
        client = redis_client(url)
        keys = Keys(prefix)
        store = Store(client, keys, Scripts(client), UserStore(client, keys), Graph(client, keys),
                      MediaSigner(b"k"), LocalStorage(tmp_path), ManualClock(NOW),
                      Settings(redis_prefix=prefix))  # fmt: skip
        made.append(client)
        return StoryReader(store)

    return make


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(world=world_st)
async def test_lua_rings_equal_the_python_rules(reader, world):
    r = reader()
    s, k = r.s, r.s.keys
    viewer = "viewer"
    await s.users.create("viewer", uid=viewer)
    expected = []
    for owner, (items, seen_seq, cf, hidden) in world.items():
        await s.users.create(owner, uid=owner)
        await s.graph.follow(viewer, owner, NOW)
        await s.graph.set_close_friend(owner, viewer, cf)
        await s.graph.set_hidden(owner, viewer, hidden)
        if seen_seq:
            await s.redis.hset(k.seen(viewer), owner, seen_seq)
        active = [ActiveItem(n + 1, aud, NOW + c, NOW + e) for n, (aud, c, e) in enumerate(items)]
        for item in active:
            await s.redis.zadd(k.items(owner), {item.member(): item.expires_ms})
            await s.redis.zadd(k.active_owners_of(owner), {owner: item.expires_ms}, gt=True)
        if not hidden:
            relation = Relation(follows=True, close_friend=cf)
            state = ring(owner, visible_items(active, relation, NOW), seen_seq, own=False)
            expected += [state] if state else []
    got = await r.tray(viewer)
    want = [
        {
            "owner_id": x.owner_id,
            "has_unseen": x.has_unseen,
            "item_count": x.item_count,
            "latest_at": rfc3339(x.latest_ms),
            "first_unseen_id": item_id(x.owner_id, x.first_unseen_seq)
            if x.first_unseen_seq
            else None,
        }
        for x in order_tray(viewer, expected)
    ]
    fields = ("has_unseen", "item_count", "latest_at", "first_unseen_id")
    assert [{"owner_id": e["owner"]["id"], **{f: e[f] for f in fields}} for e in got] == want
    assert all(e["owner"]["handle"] == e["owner"]["id"] for e in got)
    await s.redis.aclose()
