"""Shares over HTTP: a share never outlives or widens its source (docs/protocol.md, "Shares").

A share is visible to a viewer only while the sharer's rules allow it AND its
source (the root item) is live AND the source owner's rules allow it: hidden,
audience, deleted, expired. Its media is the source's media, gone with the source.
Every test here failed on the code before the rule existed (shares were
independent copies: hard-linked files, their own audience only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import assert_problem
from tests.test_audience import assert_like_missing


def _ids(viewer: Any, owner: Any) -> list[str]:
    r = viewer.get(f"/users/{owner.id}/stories")
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def _ring(viewer: Any, owner: Any) -> dict[str, Any] | None:
    entries = {e["owner"]["id"]: e for e in viewer.get("/tray").json()["items"]}
    return entries.get(owner.id)


def _share(sharer: Any, item: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = sharer.post(f"/stories/{item['id']}/share", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _media_gone(client: Any, item: dict[str, Any]) -> None:
    for url in (item["media"]["url"], item["media"]["poster_url"]):
        assert_problem(client.get(url), 404, "not-found")


def _media_ok(client: Any, item: dict[str, Any]) -> None:
    for url in (item["media"]["url"], item["media"]["poster_url"]):
        assert client.get(url).status_code == 200, url


def _world(login: Any) -> tuple[Any, Any, Any, Any]:
    """bob posts; alice shares; eve (hidden by bob) and fay follow alice."""
    bob, alice, eve, fay = login("bob"), login("alice"), login("eve"), login("fay")
    for viewer in (eve, fay):
        viewer.follow(alice)
    assert bob.put(f"/me/hidden/{eve.id}").status_code == 204
    return bob, alice, eve, fay


def test_a_user_hidden_by_the_source_owner_cannot_read_the_share(login):
    bob, alice, eve, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item, audience="public")

    assert_like_missing(eve, share)
    assert _ids(eve, alice) == []
    assert _ring(eve, alice) is None
    # everyone else still sees it, media included
    assert _ids(fay, alice) == [share["id"]]
    assert _ring(fay, alice)["item_count"] == 1
    assert fay.get(f"/stories/{share['id']}").status_code == 200


def test_the_share_serves_the_source_files_and_has_none_of_its_own(login, client, settings):
    bob, alice, _, _ = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item)
    files = sorted(p.name for p in Path(settings.data_dir, "media").rglob("*") if p.is_file())
    assert len(files) == 2  # the source's file and poster; no copy or link for the share
    assert not Path(settings.data_dir, "media", alice.id).exists()
    for variant in ("url", "poster_url"):
        mine = client.get(share["media"][variant])
        assert mine.status_code == 200
        assert mine.content == client.get(item["media"][variant]).content
    assert share["media"]["kind"] == item["media"]["kind"] == "image"


def test_deleting_the_source_ends_the_share_and_its_media(login, client):
    bob, alice, _, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item)
    _media_ok(client, share)

    assert bob.delete(f"/stories/{item['id']}").status_code == 204
    for viewer in (fay, alice):
        assert_like_missing(viewer, share)
    assert _ids(fay, alice) == [] and _ids(alice, alice) == []
    assert _ring(fay, alice) is None and _ring(alice, alice) is None
    _media_gone(client, share)
    # nor does the sharer's archive show it: it has nothing left to show
    assert alice.get("/me/archive").json()["items"] == []


def test_a_share_never_outlives_its_source(login, client, clock):
    bob, alice, _, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public", "lifetime_h": "6"}).json()
    share = _share(alice, item, lifetime_h=48)
    assert share["expires_at"] == item["expires_at"]

    clock.advance(6 * 3600 * 1000 + 1)
    assert_like_missing(fay, share)
    assert _ids(fay, alice) == [] and _ring(fay, alice) is None
    _media_gone(client, share)
    deadline = time.monotonic() + 5  # the sweeper ends both
    while time.monotonic() < deadline and not bob.get("/me/archive").json()["items"]:
        time.sleep(0.05)
    assert [a["id"] for a in bob.get("/me/archive").json()["items"]] == [item["id"]]
    assert alice.get("/me/archive").json()["items"] == []


def test_narrowing_the_source_hides_the_share_from_everyone_outside_it(login, client):
    bob, alice, _, fay = _world(login)
    cleo = login("cleo")  # bob's close friend, follows alice
    cleo.follow(alice)
    assert bob.put(f"/me/close-friends/{cleo.id}").status_code == 204
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item, audience="public")

    r = bob.patch(f"/stories/{item['id']}", json={"audience": "close_friends"})
    assert r.status_code == 200
    assert_like_missing(fay, share)
    assert _ids(fay, alice) == [] and _ring(fay, alice) is None
    # the sharer is not bob's close friend either
    assert_problem(alice.get(f"/stories/{share['id']}"), 404, "not-found")
    assert _ids(alice, alice) == [] and _ring(alice, alice) is None
    assert _ids(cleo, alice) == [share["id"]]
    got = cleo.get(f"/stories/{share['id']}")
    assert got.status_code == 200
    _media_ok(client, got.json())

    # widening again brings it back: the share follows the source's rules as they are now
    assert bob.patch(f"/stories/{item['id']}", json={"audience": "public"}).status_code == 200
    assert _ids(fay, alice) == [share["id"]]


def test_the_owner_resharing_a_close_friends_item_does_not_widen_it(login):
    bob, fay, cleo = login("bob"), login("fay"), login("cleo")
    fay.follow(bob)
    cleo.follow(bob)
    assert bob.put(f"/me/close-friends/{cleo.id}").status_code == 204
    item = bob.post_media("rocket.jpg", data={"audience": "close_friends"}).json()
    share = _share(bob, item, audience="public")

    assert_like_missing(fay, share)
    assert _ids(fay, bob) == [] and _ring(fay, bob) is None
    assert _ids(cleo, bob) == [item["id"], share["id"]]
    assert _ring(cleo, bob)["item_count"] == 2


def test_a_share_of_a_share_follows_the_root_source(login, client):
    bob, alice, eve, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item, audience="public")
    again = _share(fay, share, audience="public")
    assert again["shared_from"]["item_id"] == item["id"]
    eve.follow(fay)
    assert_like_missing(eve, again)
    assert _ids(eve, fay) == []

    assert bob.delete(f"/stories/{item['id']}").status_code == 204
    assert_like_missing(alice, again)
    _media_gone(client, again)


def test_resharing_a_share_whose_source_ended_or_is_hidden_is_404_and_makes_nothing(login):
    bob, alice, eve, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item, audience="public")

    # hidden from the root owner: as if the share did not exist
    assert_problem(eve.post(f"/stories/{share['id']}/share", json={}), 404, "not-found")
    assert _ids(eve, eve) == []
    # the root ends: nobody can reshare the share any more
    assert bob.delete(f"/stories/{item['id']}").status_code == 204
    assert_problem(fay.post(f"/stories/{share['id']}/share", json={}), 404, "not-found")
    assert _ids(fay, fay) == []
    assert fay.get("/me/archive").json()["items"] == []


def test_resharing_a_share_of_a_narrowed_source_is_404(login):
    bob, alice, _, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item, audience="public")
    assert bob.patch(f"/stories/{item['id']}", json={"audience": "followers"}).status_code == 200
    assert_problem(fay.post(f"/stories/{share['id']}/share", json={}), 404, "not-found")
    fay.follow(bob)  # now inside the source's audience
    assert fay.post(f"/stories/{share['id']}/share", json={}).status_code == 201


def test_the_sharer_can_still_delete_a_share_they_can_no_longer_see(login):
    bob, alice, _, fay = _world(login)
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    share = _share(alice, item, audience="public")
    assert bob.put(f"/me/hidden/{alice.id}").status_code == 204
    assert_problem(alice.get(f"/stories/{share['id']}"), 404, "not-found")
    assert alice.delete(f"/stories/{share['id']}").status_code == 204
    assert bob.delete(f"/me/hidden/{alice.id}").status_code == 204
    assert _ids(fay, alice) == []  # it stays deleted


def test_the_tray_agrees_with_user_stories_when_shares_are_involved(login, clock):
    bob, alice, eve, fay = _world(login)
    cleo = login("cleo")
    for viewer in (cleo, eve, fay):
        viewer.follow(bob)
    cleo.follow(alice)
    assert bob.put(f"/me/close-friends/{cleo.id}").status_code == 204
    posts = [
        bob.post_media("rocket.jpg", data={"audience": a}).json()
        for a in ("public", "public", "followers", "close_friends")
    ]
    alice_own = alice.post_media("coffee.png", data={"audience": "public"}).json()
    clock.advance(1000)
    shares = [_share(alice, posts[0]), _share(alice, posts[1]), _share(bob, posts[3])]
    assert (
        bob.patch(f"/stories/{posts[1]['id']}", json={"audience": "followers"}).status_code == 200
    )
    fay.post(f"/stories/{alice_own['id']}/seen")
    cleo.post(f"/stories/{shares[0]['id']}/seen")

    def check(viewer: Any, owner: Any) -> None:
        listing = viewer.get(f"/users/{owner.id}/stories").json()
        ring = _ring(viewer, owner)
        if not listing["items"]:
            assert ring is None, (viewer.id, owner.id, ring)
            return
        assert ring is not None, (viewer.id, owner.id)
        unseen = listing["first_unseen_id"] if viewer is not owner else None
        assert ring["item_count"] == len(listing["items"]), (viewer.id, owner.id)
        assert ring["first_unseen_id"] == unseen, (viewer.id, owner.id)
        assert ring["has_unseen"] == (unseen is not None)

    checked = 0
    for viewer in (bob, alice, eve, fay, cleo):
        followed = {u["id"] for u in viewer.get("/me/following").json()["items"]}
        for owner in (bob, alice):
            if viewer is owner or owner.id in followed:
                check(viewer, owner)
                checked += 1
    assert checked == 8
    # what that means here
    assert _ids(fay, alice) == [alice_own["id"], shares[0]["id"], shares[1]["id"]]
    assert _ids(eve, alice) == [alice_own["id"]]
    assert _ids(alice, alice) == [alice_own["id"], shares[0]["id"]]  # not a follower of bob
    assert _ids(cleo, bob)[-1] == shares[2]["id"]
    assert shares[2]["id"] not in _ids(fay, bob)
