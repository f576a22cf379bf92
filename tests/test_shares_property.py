"""Shares over HTTP on random graphs: every read agrees with the share rule (docs/protocol.md).

Each Hypothesis example signs in four fresh users, draws a random graph
(follows, close friends, hidden) and has user 0 post a source item. A random
user shares it, another reshares that share (a share of a share), each with a
random audience; then one random change happens: none, the source's audience
changes, the source or the first share is deleted, the clock passes the source's
6 h lifetime, or one graph edge flips. Then, for every user, the app (real Redis,
TestClient through the lifespan) must agree with a plain model of the rule:
- `POST /share` answers 404 exactly when the sharer may not see the item, 403
  for someone else's non-public item, 201 otherwise, and the new share points at
  the root source;
- `GET /stories/{id}` answers 200 exactly for the items the model shows the user
  (a share: sharer's rules, source live, source owner's rules), and its media
  URLs serve; the URLs handed out at creation answer 404 once an item is not live;
- `GET /users/{id}/stories` lists exactly the visible items, and the tray's ring
  for that owner agrees with the listing (count, first unseen);
- resharing the first share at the end is 404 exactly when it is not visible.
On the code before the rule, shares were independent copies: they outlived and
widened their sources, and these assertions fail.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from server.app import create_app
from server.core.audience import AUDIENCES, Relation, can_see
from server.core.clock import ManualClock
from server.core.settings import Settings
from tests.conftest import Api

N = 4
PAIRS = [(a, b) for a in range(N) for b in range(N) if a != b]
SIX_HOURS_MS = 6 * 3600 * 1000
examples = itertools.count()

edge_sets = st.sets(st.sampled_from(PAIRS), max_size=8)
share_op = st.tuples(st.integers(0, N - 1), st.sampled_from(AUDIENCES), st.sampled_from([6, 48]))
change = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("audience"), st.sampled_from(AUDIENCES)),
    st.tuples(st.just("delete"), st.sampled_from(["src", "s1"])),
    st.just(("expire",)),
    st.tuples(
        st.just("graph"),
        st.sampled_from(["following", "close-friends", "hidden"]),
        st.sampled_from(PAIRS),
    ),
)
worlds = st.fixed_dictionaries(
    {
        "follows": edge_sets,  # (viewer, owner)
        "close": edge_sets,  # (owner, friend)
        "hidden": edge_sets,  # (owner, viewer)
        "source": st.tuples(st.sampled_from(AUDIENCES), st.sampled_from([6, 24])),
        "s1": share_op,
        "s2": share_op,
        "change": change,
        "seen": st.tuples(st.integers(0, N - 1), st.sampled_from(["src", "s1", "s2"])),
    }
)


@dataclass
class Item:
    owner: int
    audience: str
    expires_ms: int
    source: str | None = None  # the name of the root source, for a share
    deleted: bool = False


@dataclass
class Model:
    follows: set[tuple[int, int]]
    close: set[tuple[int, int]]
    hidden: set[tuple[int, int]]
    now: int
    items: dict[str, Item] = field(default_factory=dict)

    def relation(self, viewer: int, owner: int) -> Relation:
        if viewer == owner:
            return Relation(is_owner=True)
        return Relation(follows=(viewer, owner) in self.follows,
                        close_friend=(owner, viewer) in self.close,
                        hidden=(owner, viewer) in self.hidden)  # fmt: skip

    def live(self, name: str) -> bool:
        item = self.items.get(name)
        if item is None or item.deleted or item.expires_ms <= self.now:
            return False
        return item.source is None or self.live(item.source)

    def visible(self, viewer: int, name: str) -> bool:
        if not self.live(name):
            return False
        item = self.items[name]
        if not can_see(self.relation(viewer, item.owner), item.audience):
            return False
        source = self.items[item.source] if item.source else None
        return source is None or can_see(self.relation(viewer, source.owner), source.audience)

    def in_tray(self, viewer: int, owner: int) -> bool:
        rel = self.relation(viewer, owner)
        return rel.is_owner or (rel.follows and not rel.hidden)


def _login(client: TestClient, handle: str) -> Api:
    r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
    assert r.status_code == 200, r.text
    return Api(client, r.json()["token"], r.json()["user"])


def _graph(users: list[Any], kind: str, a: int, b: int, on: bool) -> None:
    """`a` acts on `b`: follows b, makes b a close friend, hides from b."""
    call = users[a].put if on else users[a].delete
    assert call(f"/me/{kind}/{users[b].id}").status_code == 204


def _share(m: Model, users: list[Any], name: str, of: str, op: tuple[Any, ...],
           ids: dict[str, str]) -> dict[str, Any] | None:  # fmt: skip
    """User `op[0]` shares item `of`; the answer must be the model's. Returns the share."""
    sharer, audience, lifetime_h = op
    original = m.items[of]
    r = users[sharer].post(f"/stories/{ids[of]}/share",
                           json={"audience": audience, "lifetime_h": lifetime_h})  # fmt: skip
    if not m.visible(sharer, of):
        assert r.status_code == 404, (name, r.text)
        return None
    if original.audience != "public" and original.owner != sharer:
        assert r.status_code == 403, (name, r.text)
        return None
    assert r.status_code == 201, (name, r.text)
    root = original.source or of
    body = dict(r.json())
    assert body["shared_from"]["item_id"] == ids[root]
    expires = min(m.now + lifetime_h * 3600 * 1000, m.items[root].expires_ms)
    m.items[name] = Item(sharer, audience, expires, root)
    ids[name] = body["id"]
    return body


def _apply(
    m: Model, users: list[Any], ids: dict[str, str], op: tuple[Any, ...], clock: Any
) -> None:
    if op[0] == "audience" and m.live("src"):
        r = users[0].patch(f"/stories/{ids['src']}", json={"audience": op[1]})
        assert r.status_code == 200, r.text
        m.items["src"].audience = op[1]
    elif op[0] == "delete" and op[1] in m.items and m.live(op[1]):
        owner = m.items[op[1]].owner
        assert users[owner].delete(f"/stories/{ids[op[1]]}").status_code == 204
        m.items[op[1]].deleted = True
    elif op[0] == "expire":
        clock.advance(SIX_HOURS_MS + 1)
        m.now += SIX_HOURS_MS + 1
    elif op[0] == "graph":
        kind, (a, b) = op[1], op[2]
        edges = {"following": m.follows, "close-friends": m.close, "hidden": m.hidden}[kind]
        on = (a, b) not in edges
        _graph(users, kind, a, b, on)
        edges.symmetric_difference_update({(a, b)})


def _check(m: Model, users: list[Any], ids: dict[str, str], made: dict[str, Any],
           client: Any) -> None:  # fmt: skip
    for name, item in made.items():  # URLs are not bound to a viewer: they end with the item
        status = 200 if m.live(name) else 404
        for url in (item["media"]["url"], item["media"]["poster_url"]):
            assert client.get(url).status_code == status, (name, url)
    for v, user in enumerate(users):
        for name in m.items:
            r = user.get(f"/stories/{ids[name]}")
            assert r.status_code == (200 if m.visible(v, name) else 404), (v, name, r.text)
            if r.status_code == 200:
                assert client.get(r.json()["media"]["url"]).status_code == 200, (v, name)
        tray = {e["owner"]["id"]: e for e in user.get("/tray").json()["items"]}
        for o, owner in enumerate(users):
            listing = user.get(f"/users/{owner.id}/stories").json()
            want = sorted((n for n, i in m.items.items() if i.owner == o and m.visible(v, n)),
                          key=lambda n: int(ids[n].rpartition(".")[2]))  # fmt: skip
            assert [i["id"] for i in listing["items"]] == [ids[n] for n in want], (v, o)
            ring = tray.get(owner.id)
            if not want or not m.in_tray(v, o):
                assert ring is None, (v, o, ring)
                continue
            assert ring is not None, (v, o)
            unseen = listing["first_unseen_id"] if v != o else None
            assert (ring["item_count"], ring["first_unseen_id"]) == (len(want), unseen), (v, o)


def _world(**changes: Any) -> dict[str, Any]:
    """An explicit example: user 2 (hidden by the source owner) and 3 (a close friend of
    theirs) follow user 1, who shares user 0's public item; user 3 reshares it."""
    base = {"follows": {(2, 1), (3, 1)}, "close": {(0, 3)}, "hidden": {(0, 2)},
            "source": ("public", 6), "s1": (1, "public", 48), "s2": (3, "public", 48),
            "change": ("none",), "seen": (3, "s1")}  # fmt: skip
    return {**base, **changes}


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(w=worlds)
@example(w=_world())  # the hidden user
@example(w=_world(change=("delete", "src")))
@example(w=_world(change=("expire",)))
@example(w=_world(change=("audience", "close_friends")))
def test_every_read_of_a_share_follows_its_source(settings: Settings, w: dict[str, Any]) -> None:
    # an app (and clock, and key prefix) per example: tokens are minted on the app's clock
    mine = replace(settings, redis_prefix=f"{settings.redis_prefix}{next(examples)}:")
    clock = ManualClock()
    with TestClient(create_app(mine, clock)) as client:
        _example(client, clock, w)


def _example(client: TestClient, clock: ManualClock, w: dict[str, Any]) -> None:
    users = [_login(client, f"u{n}") for n in range(N)]
    m = Model(set(), set(), set(), clock.now_ms())
    for kind, key in (("following", "follows"), ("close-friends", "close"), ("hidden", "hidden")):
        for a, b in sorted(w[key]):
            _graph(users, kind, a, b, True)
            getattr(m, key).add((a, b))
    audience, lifetime_h = w["source"]
    r = users[0].post_media("rocket.jpg", data={"audience": audience, "lifetime_h": lifetime_h})
    assert r.status_code == 201, r.text
    made = {"src": r.json()}
    ids = {"src": made["src"]["id"]}
    m.items["src"] = Item(0, audience, m.now + lifetime_h * 3600 * 1000)
    for name, of in (("s1", "src"), ("s2", "s1")):
        if of in m.items and (share := _share(m, users, name, of, w[name], ids)) is not None:
            made[name] = share
    viewer, name = w["seen"]
    if name in m.items:  # a seen mark, so the rings' first unseen ids differ
        r = users[viewer].post(f"/stories/{ids[name]}/seen")
        assert r.status_code == (204 if m.visible(viewer, name) else 404), r.text
    _apply(m, users, ids, w["change"], clock)
    _check(m, users, ids, made, client)
    if "s1" in m.items:  # resharing the first share: 404 exactly when it is not visible
        for v in range(N):
            r = users[v].post(f"/stories/{ids['s1']}/share", json={})
            assert (r.status_code == 404) == (not m.visible(v, "s1")), (v, r.text)
