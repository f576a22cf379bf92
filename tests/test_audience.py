"""Audience at every exit: reads, tray, seen, reactions, replies, share, media URLs.

An item the caller may not see answers exactly like a missing one: 404 with the
same problem body (only the id in `detail` differs). Then pure unit tests of the
rules in `server/core/audience.py` and `server/core/tray.py`, with exact input/output.
"""

from __future__ import annotations

from itertools import product
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from server.core.audience import AUDIENCES, Relation, can_see
from server.core.tray import ActiveItem, TrayState, in_tray, order_tray, ring, visible_items
from tests.conftest import assert_problem

# Every per-item endpoint a viewer can call: (method, path suffix, JSON body, success status).
ITEM_CALLS: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("GET", "", None, 200),
    ("POST", "/seen", None, 204),
    ("POST", "/reactions", {"emoji": "🔥"}, 204),
    ("POST", "/replies", {"text": "nice"}, 201),
    ("POST", "/share", {}, 201),
]


def _call(api: Any, method: str, item_id: str, suffix: str, body: Any) -> Any:
    kw = {"json": body} if body is not None else {}
    return getattr(api, method.lower())(f"/stories/{item_id}{suffix}", **kw)


def _masked(resp: Any, item_id: str) -> dict[str, Any]:
    body = dict(resp.json())
    body["detail"] = body["detail"].replace(item_id, "<id>")
    return body


def assert_like_missing(viewer: Any, item: dict[str, Any]) -> None:
    """Every item endpoint answers `viewer` for `item` exactly as for a never-existing id."""
    real = item["id"]
    owner, _, seq = real.rpartition(".")
    missing = f"{owner}.{int(seq) + 1000}"
    calls = [
        *ITEM_CALLS,
        ("GET", "/viewers", None, 0),
        ("GET", "/replies", None, 0),
        ("DELETE", "", None, 0),
        ("PATCH", "", {"audience": "public"}, 0),
    ]
    for method, suffix, body, _ in calls:
        hidden = _call(viewer, method, real, suffix, body)
        absent = _call(viewer, method, missing, suffix, body)
        assert_problem(hidden, 404, "not-found")
        assert_problem(absent, 404, "not-found")
        assert _masked(hidden, real) == _masked(absent, missing), (method, suffix)
        assert hidden.headers["content-type"] == absent.headers["content-type"]


def assert_visible(viewer: Any, item: dict[str, Any]) -> None:
    """Every item call works; sharing someone else's item only when it is public."""
    for method, suffix, body, status in ITEM_CALLS:
        r = _call(viewer, method, item["id"], suffix, body)
        if suffix == "/share" and item["audience"] != "public":
            assert_problem(r, 403, "forbidden")
            continue
        assert r.status_code == status, (method, suffix, r.text)


def _user_item_ids(viewer: Any, owner: Any) -> list[str]:
    r = viewer.get(f"/users/{owner.id}/stories")
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def _tray(viewer: Any) -> dict[str, dict[str, Any]]:
    return {e["owner"]["handle"]: e for e in viewer.get("/tray").json()["items"]}


# --- who may not see: 404 like a missing id -----------------------------------------------


@pytest.mark.parametrize(
    ("audience", "setup"),
    [
        ("followers", "stranger"),
        ("close_friends", "follower"),
        ("public", "hidden"),
        ("followers", "hidden_follower"),
        ("close_friends", "hidden_close_friend"),
    ],
)
def test_viewer_who_may_not_see_gets_404_like_missing(login, audience, setup):
    bob, eve = login("bob"), login("eve")
    if setup != "stranger" and setup != "hidden":
        eve.follow(bob)
    if setup == "hidden_close_friend":
        assert bob.put(f"/me/close-friends/{eve.id}").status_code == 204
    if setup.startswith("hidden"):
        assert bob.put(f"/me/hidden/{eve.id}").status_code == 204
    item = bob.post_media("rocket.jpg", data={"audience": audience}).json()

    assert_like_missing(eve, item)
    # the owner's list of stories: as if the owner had none
    listing = eve.get(f"/users/{bob.id}/stories").json()
    assert listing["items"] == [] and listing["first_unseen_id"] is None
    assert listing["owner"]["id"] == bob.id
    assert "bob" not in _tray(eve)
    # nothing the invisible viewer tried left a trace for the owner
    assert bob.get(f"/stories/{item['id']}").json()["view_count"] == 0
    assert bob.get(f"/stories/{item['id']}/viewers").json()["count"] == 0
    assert bob.get(f"/stories/{item['id']}/replies").json()["items"] == []
    assert eve.get(f"/users/{eve.id}/stories").json()["items"] == []  # no share was made


@pytest.mark.parametrize(
    ("audience", "setup"),
    [
        ("public", "stranger"),
        ("public", "follower"),
        ("followers", "follower"),
        ("close_friends", "close_friend"),
        ("close_friends", "close_friend_not_following"),
    ],
)
def test_viewer_who_may_see_gets_every_action(login, audience, setup):
    bob, ann = login("bob"), login("ann")
    if setup in ("follower", "close_friend"):
        ann.follow(bob)
    if setup.startswith("close_friend"):
        assert bob.put(f"/me/close-friends/{ann.id}").status_code == 204
    item = bob.post_media("rocket.jpg", data={"audience": audience}).json()

    assert _user_item_ids(ann, bob) == [item["id"]]
    assert_visible(ann, item)
    viewers = bob.get(f"/stories/{item['id']}/viewers").json()
    assert [(v["user"]["id"], v["reaction"]) for v in viewers["items"]] == [(ann.id, "🔥")]
    assert [r["text"] for r in bob.get(f"/stories/{item['id']}/replies").json()["items"]] == [
        "nice"
    ]
    # the tray lists only owners the viewer follows
    assert ("bob" in _tray(ann)) == (setup in ("follower", "close_friend"))
    # a viewer who may see but is not the owner: viewers is 403 (not hidden), delete 403
    assert_problem(ann.get(f"/stories/{item['id']}/viewers"), 403, "forbidden")
    assert_problem(ann.delete(f"/stories/{item['id']}"), 403, "forbidden")


def test_mixed_audiences_each_viewer_sees_exactly_their_share(login):
    bob = login("bob")
    stranger, follower, friend = (login(h) for h in ("stan", "fay", "cleo"))
    follower.follow(bob)
    friend.follow(bob)
    assert bob.put(f"/me/close-friends/{friend.id}").status_code == 204
    ids = {
        a: bob.post_media("rocket.jpg", data={"audience": a}).json()["id"]
        for a in ("close_friends", "public", "followers")
    }
    cf, pub, fol = ids["close_friends"], ids["public"], ids["followers"]

    assert _user_item_ids(stranger, bob) == [pub]
    assert _user_item_ids(follower, bob) == [pub, fol]
    assert _user_item_ids(friend, bob) == [cf, pub, fol]
    assert _user_item_ids(bob, bob) == [cf, pub, fol]

    fay = _tray(follower)["bob"]
    assert (fay["item_count"], fay["first_unseen_id"], fay["has_unseen"]) == (2, pub, True)
    cleo = _tray(friend)["bob"]
    assert (cleo["item_count"], cleo["first_unseen_id"]) == (3, cf)
    assert _tray(stranger) == {}
    # the follower marks the last visible item seen: the ring is fully seen for them,
    # while the invisible close-friends item never counts
    assert follower.post(f"/stories/{fol}/seen").status_code == 204
    fay = _tray(follower)["bob"]
    assert (fay["has_unseen"], fay["first_unseen_id"]) == (False, None)
    assert bob.get(f"/stories/{cf}").json()["view_count"] == 0
    assert bob.get(f"/stories/{pub}").json()["view_count"] == 0  # seen by the pointer, not shown
    assert bob.get(f"/stories/{fol}").json()["view_count"] == 1


def test_hiding_a_viewer_removes_the_ring_and_unhiding_restores_it(login):
    bob, eve = login("bob"), login("eve")
    eve.follow(bob)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    assert _tray(eve)["bob"]["first_unseen_id"] == item["id"]

    assert bob.put(f"/me/hidden/{eve.id}").status_code == 204
    assert _tray(eve) == {}
    assert_like_missing(eve, item)
    assert [u["id"] for u in bob.get("/me/hidden").json()["items"]] == [eve.id]

    assert bob.delete(f"/me/hidden/{eve.id}").status_code == 204
    entry = _tray(eve)["bob"]
    assert entry["has_unseen"] and entry["item_count"] == 1
    assert eve.get(f"/stories/{item['id']}").status_code == 200


def test_unfollow_removes_the_ring_and_followers_items(login):
    bob, eve = login("bob"), login("eve")
    eve.follow(bob)
    fol = bob.post_media("rocket.jpg").json()
    pub = bob.post_media("coffee.png", data={"audience": "public"}).json()
    assert _tray(eve)["bob"]["item_count"] == 2

    assert eve.delete(f"/me/following/{bob.id}").status_code == 204
    assert _tray(eve) == {}
    assert_like_missing(eve, fol)
    # public stays readable by id and on the profile, but not in the tray
    assert _user_item_ids(eve, bob) == [pub["id"]]


def test_close_friends_item_is_for_close_friends_only(login):
    bob, friend, follower = (login(h) for h in ("bob", "cleo", "fay"))
    friend.follow(bob)
    follower.follow(bob)
    assert bob.put(f"/me/close-friends/{friend.id}").status_code == 204
    item = bob.post_media("rocket.jpg", data={"audience": "close_friends"}).json()

    assert _tray(friend)["bob"]["first_unseen_id"] == item["id"]
    assert _tray(follower) == {}
    assert_like_missing(follower, item)
    # removing a close friend takes the item away at once
    assert bob.delete(f"/me/close-friends/{friend.id}").status_code == 204
    assert _tray(friend) == {}
    assert_like_missing(friend, item)


def test_audience_change_applies_to_every_read(login):
    bob, fay = login("bob"), login("fay")
    fay.follow(bob)
    item = bob.post_media("rocket.jpg").json()
    assert "bob" in _tray(fay)
    r = bob.patch(f"/stories/{item['id']}", json={"audience": "close_friends"})
    assert r.status_code == 200 and r.json()["audience"] == "close_friends"
    assert _tray(fay) == {}
    assert_like_missing(fay, item)


def test_share_of_invisible_item_is_404_and_creates_nothing(login):
    bob, eve = login("bob"), login("eve")
    item = bob.post_media("rocket.jpg", data={"audience": "followers"}).json()
    r = eve.post(f"/stories/{item['id']}/share", json={"caption": "mine now"})
    assert_problem(r, 404, "not-found")
    assert eve.get(f"/users/{eve.id}/stories").json()["items"] == []
    assert eve.get("/me/archive").json()["items"] == []


# --- media URLs --------------------------------------------------------------------------


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return f"{parts.path}?{urlencode(query)}"


def test_media_urls_refuse_any_tampering_with_404(login, client):
    bob = login("bob")
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    url, poster = item["media"]["url"], item["media"]["poster_url"]
    assert client.get(url).status_code == 200
    assert client.get(poster).status_code == 200
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    sig, exp = q["sig"], int(q["exp"])
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    other_id = item["id"].rpartition(".")[0] + ".999"
    bad = [
        _with_query(url, sig=flipped),
        _with_query(url, sig=sig[:-1]),
        _with_query(url, sig=""),
        _with_query(url, exp=str(exp + 1)),
        _with_query(url, exp=str(exp + 3600_000)),
        _with_query(url, exp="-1"),
        _with_query(url, exp="0" + str(exp)),  # one number, one spelling
        _with_query(url, s="archive"),
        url.replace("/file?", "/poster?"),  # the file's signature on the poster
        poster.replace("/poster?", "/file?"),
        url.replace("/file?", "/original?"),  # a variant that does not exist
        url.replace(f"/media/{item['id']}/", f"/media/{other_id}/"),
        urlsplit(url).path,  # no query at all
    ]
    for candidate in bad:
        for method in ("GET", "HEAD"):
            r = client.request(method, candidate)
            assert r.status_code == 404, (method, candidate)
            if method == "GET":
                assert_problem(r, 404, "not-found")
                assert r.json() == client.get(bad[0]).json()


def test_media_url_stops_at_delete_even_for_a_viewer_who_had_it(login, client):
    bob, fay = login("bob"), login("fay")
    fay.follow(bob)
    item = bob.post_media("rocket.jpg").json()
    url = fay.get(f"/stories/{item['id']}").json()["media"]["url"]
    assert client.get(url).status_code == 200
    assert bob.delete(f"/stories/{item['id']}").status_code == 204
    assert_problem(client.get(url), 404, "not-found")


# --- pure rules: audience.py ------------------------------------------------------------


@pytest.mark.parametrize(
    ("relation", "expected"),
    [
        (Relation(), {"public": True, "followers": False, "close_friends": False}),
        (Relation(follows=True), {"public": True, "followers": True, "close_friends": False}),
        (Relation(close_friend=True), {"public": True, "followers": False, "close_friends": True}),
        (
            Relation(follows=True, close_friend=True),
            {"public": True, "followers": True, "close_friends": True},
        ),
        (
            Relation(follows=True, close_friend=True, hidden=True),
            {"public": False, "followers": False, "close_friends": False},
        ),
        (Relation(hidden=True), {"public": False, "followers": False, "close_friends": False}),
        (Relation(is_owner=True), {"public": True, "followers": True, "close_friends": True}),
        (
            Relation(is_owner=True, hidden=True),
            {"public": True, "followers": True, "close_friends": True},
        ),
    ],
)
def test_can_see_table(relation, expected):
    assert {a: can_see(relation, a) for a in AUDIENCES} == expected
    assert {a: relation.can_see(a) for a in AUDIENCES} == expected


def test_unknown_audience_is_seen_by_the_owner_only():
    for follows, cf in product((False, True), repeat=2):
        assert can_see(Relation(follows=follows, close_friend=cf), "everyone") is False
        assert can_see(Relation(follows=follows, close_friend=cf), "") is False
    assert can_see(Relation(is_owner=True), "everyone") is True


def test_hidden_always_wins_over_every_other_flag():
    for follows, cf, audience in product((False, True), (False, True), AUDIENCES):
        assert not can_see(Relation(follows=follows, close_friend=cf, hidden=True), audience)


# --- pure rules: tray.py ----------------------------------------------------------------

NOW = 1_000_000


def item(seq: int, audience: str = "followers", created: int | None = None, ttl: int = 100):
    created_ms = NOW - 1000 + seq if created is None else created
    return ActiveItem(seq, audience, created_ms, NOW + ttl)


def test_active_item_member_round_trip():
    i = ActiveItem(7, "close_friends", 1234, 5678)
    assert i.member() == "7|c|1234"
    assert ActiveItem.parse(b"7|c|1234", 5678.0) == i
    assert ActiveItem.parse("12|p|9", 10) == ActiveItem(12, "public", 9, 10)
    assert ActiveItem.parse("3|f|1", 2.0).audience == "followers"


def test_visible_items_filters_expired_and_audience_and_sorts_by_seq():
    items = [
        item(3),
        ActiveItem(1, "public", NOW - 5, NOW),  # expires exactly now: gone
        ActiveItem(2, "public", NOW - 5, NOW + 1),
        item(5, "close_friends"),
        item(4, "public"),
        ActiveItem(0, "followers", NOW - 9, NOW - 1),
    ]
    follower = Relation(follows=True)
    assert [i.seq for i in visible_items(items, follower, NOW)] == [2, 3, 4]
    assert [i.seq for i in visible_items(items, Relation(), NOW)] == [2, 4]
    assert [i.seq for i in visible_items(items, Relation(close_friend=True), NOW)] == [2, 4, 5]
    assert [i.seq for i in visible_items(items, Relation(is_owner=True), NOW)] == [2, 3, 4, 5]
    assert visible_items(items, Relation(follows=True, hidden=True), NOW) == []
    assert [i.seq for i in visible_items(items, follower, NOW - 1)] == [1, 2, 3, 4]


def test_ring_states():
    items = [item(2, created=100), item(5, created=300), item(9, created=200)]
    assert ring("o", [], 0, own=False) is None
    assert ring("o", items, 0, own=False) == TrayState("o", True, 3, 300, 2)
    assert ring("o", items, 2, own=False) == TrayState("o", True, 3, 300, 5)
    assert ring("o", items, 4, own=False) == TrayState("o", True, 3, 300, 5)
    assert ring("o", items, 9, own=False) == TrayState("o", False, 3, 300, None)
    assert ring("o", items, 50, own=False) == TrayState("o", False, 3, 300, None)
    # the caller's own ring never shows unseen
    assert ring("me", items, 0, own=True) == TrayState("me", False, 3, 300, None)


def test_in_tray_is_own_or_followed_and_not_hidden():
    # (is_owner, follows, hidden) -> whether the owner can have a ring at all
    table = {
        (True, False, False): True,
        (True, True, False): True,
        (False, True, False): True,
        (False, True, True): False,  # hidden from: no ring, whatever they post
        (False, False, False): False,  # not followed: public items do not make a ring
        (False, False, True): False,
    }
    for args, want in table.items():
        assert in_tray(*args) is want, args


def test_order_tray_own_first_then_unseen_then_seen_by_latest_then_id():
    def st(owner: str, unseen: bool, latest: int) -> TrayState:
        return TrayState(owner, unseen, 1, latest, 1 if unseen else None)

    rings = [
        st("s_old", False, 10),
        st("u_mid", True, 50),
        st("me", False, 1),  # own: first even though oldest and seen
        st("s_new", False, 90),
        st("u_tie_b", True, 70),
        st("u_new", True, 80),
        st("u_tie_a", True, 70),
        st("s_tie_b", False, 40),
        st("s_tie_a", False, 40),
    ]
    ordered = [r.owner_id for r in order_tray("me", rings)]
    assert ordered == [
        "me",
        "u_new",
        "u_tie_a",
        "u_tie_b",
        "u_mid",
        "s_new",
        "s_tie_a",
        "s_tie_b",
        "s_old",
    ]
    # input order does not matter; without an own ring nothing is put first
    assert [r.owner_id for r in order_tray("me", list(reversed(rings)))] == ordered
    assert [r.owner_id for r in order_tray("zz", rings)][:2] == ["u_new", "u_tie_a"]
    assert order_tray("me", []) == []


def test_tray_drops_expired_rings_end_to_end():
    """visible_items → ring → order_tray: an owner whose items all expired has no ring."""
    viewer = "me"
    data = {
        "me": [ActiveItem(1, "followers", NOW - 50, NOW + 10)],
        "gone": [ActiveItem(4, "public", NOW - 10, NOW)],
        "live": [ActiveItem(1, "public", NOW - 20, NOW + 5), ActiveItem(2, "public", NOW - 5, NOW)],
    }
    rings = []
    for owner, items in data.items():
        rel = Relation(is_owner=owner == viewer, follows=True)
        r = ring(owner, visible_items(items, rel, NOW), 0, own=owner == viewer)
        if r:
            rings.append(r)
    assert order_tray(viewer, rings) == [
        TrayState("me", False, 1, NOW - 50, None),
        TrayState("live", True, 1, NOW - 20, 1),
    ]


def test_a_close_friends_item_cannot_be_reshared_past_its_audience(login):
    """A close friend re-sharing publicly would show the item to users the owner hides."""
    bob, cleo, stan = login("bob"), login("cleo"), login("stan")
    cleo.follow(bob)
    stan.follow(cleo)
    assert bob.put(f"/me/close-friends/{cleo.id}").status_code == 204
    assert bob.put(f"/me/hidden/{stan.id}").status_code == 204
    item = bob.post_media("rocket.jpg", data={"audience": "close_friends"}).json()
    r = cleo.post(f"/stories/{item['id']}/share", json={"audience": "public"})
    assert_problem(r, 403, "forbidden")
    assert stan.get(f"/users/{cleo.id}/stories").json()["items"] == []
    assert bob.post(f"/stories/{item['id']}/share", json={}).status_code == 201  # the owner may
