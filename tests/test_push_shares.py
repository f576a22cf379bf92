"""Shares over the WebSocket: pushes follow the share rule (docs/protocol.md, "Shares").

Real uvicorn, real WebSocket clients, real Redis pub/sub. A share's story.new
reaches only viewers who may see its source; when the source is deleted,
expires or narrows, those who could see the share get story.removed and their
corrected tray entry; a graph change towards the source owner corrects the
sharer's ring. Each socket's tray ends equal to `GET /tray`.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.core.clock import ManualClock
from tests.live import Client, LiveServer, Socket


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def live(settings, clock):
    with LiveServer(settings, clock) as server:
        yield server


def _about(events: list[dict[str, Any]], item_id: str) -> list[dict[str, Any]]:
    return [
        e for e in events if e.get("item_id") == item_id or e.get("item", {}).get("id") == item_id
    ]


async def _agrees(sock: Socket, client: Client) -> None:
    """The socket's tray (snapshot + deltas so far) equals GET /tray."""
    await sock.drain(0.3)
    truth = {e["owner"]["id"]: e for e in (await client.http.get("/tray")).json()["items"]}
    keys = ("has_unseen", "item_count", "first_unseen_id")
    mine = {o: {k: e[k] for k in keys} for o, e in sock.tray().items()}
    assert mine == {o: {k: e[k] for k in keys} for o, e in truth.items()}


async def _world(live: LiveServer) -> tuple[Client, Client, Client, Client]:
    """bob posts, alice shares; eve (hidden by bob) and fay follow alice."""
    bob, alice, eve, fay = (Client(live, h) for h in ("bob", "alice", "eve", "fay"))
    for viewer in (eve, fay):
        assert (await viewer.http.put(f"/me/following/{alice.id}")).status_code == 204
    assert (await bob.http.put(f"/me/hidden/{eve.id}")).status_code == 204
    return bob, alice, eve, fay


async def _share(sharer: Client, item: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = await sharer.http.post(f"/stories/{item['id']}/share", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_a_share_is_never_pushed_to_a_user_hidden_by_the_source_owner(live):
    bob, alice, eve, fay = await _world(live)
    eve_sock, fay_sock = await eve.socket(), await fay.socket()
    item = await bob.post_photo(audience="public")
    share = await _share(alice, item, audience="public")

    new = await fay_sock.next("story.new")
    assert new["item"]["id"] == share["id"]
    assert new["item"]["shared_from"]["item_id"] == item["id"]
    assert (await fay_sock.next("tray.update"))["entry"]["item_count"] == 1
    assert await eve_sock.drain() == []
    # the sharer's own device counts it too; nothing about it may reach eve later either
    await alice.http.post(f"/stories/{share['id']}/reactions", json={"emoji": "🔥"})
    assert await eve_sock.drain() == []
    for sock, client in ((eve_sock, eve), (fay_sock, fay)):
        await _agrees(sock, client)
        await sock.close()


async def test_an_owner_reshare_of_a_close_friends_item_is_pushed_to_close_friends_only(live):
    bob, fay, cleo = (Client(live, h) for h in ("bob", "fay", "cleo"))
    for viewer in (fay, cleo):
        await viewer.http.put(f"/me/following/{bob.id}")
    await bob.http.put(f"/me/close-friends/{cleo.id}")
    fay_sock, cleo_sock = await fay.socket(), await cleo.socket()
    item = await bob.post_photo(audience="close_friends")
    share = await _share(bob, item, audience="public")

    got = [e["item"]["id"] for e in await cleo_sock.drain(0.5) if e["type"] == "story.new"]
    assert got == [item["id"], share["id"]]
    assert await fay_sock.drain() == []
    for sock, client in ((fay_sock, fay), (cleo_sock, cleo)):
        await _agrees(sock, client)
        await sock.close()


async def test_deleting_the_source_pushes_the_removal_of_its_shares(live):
    bob, alice, eve, fay = await _world(live)
    item = await bob.post_photo(audience="public")
    share = await _share(alice, item, audience="public")
    eve_sock, fay_sock, alice_sock = await eve.socket(), await fay.socket(), await alice.socket()
    assert [e["first_unseen_id"] for e in fay_sock.snapshot] == [share["id"]]
    assert eve_sock.snapshot == []

    assert (await bob.http.delete(f"/stories/{item['id']}")).status_code == 204
    removed = await fay_sock.next("story.removed", item_id=share["id"])
    assert removed == {**removed, "owner_id": alice.id, "reason": "deleted"}
    assert (await fay_sock.next("tray.remove"))["owner_id"] == alice.id
    assert (await alice_sock.next("story.removed"))["item_id"] == share["id"]
    assert (await alice_sock.next("tray.remove"))["owner_id"] == alice.id
    assert await eve_sock.drain() == []
    for sock, client in ((eve_sock, eve), (fay_sock, fay), (alice_sock, alice)):
        await _agrees(sock, client)
        await sock.close()


async def test_the_source_expiring_removes_its_shares(live, clock):
    bob, alice, _, fay = await _world(live)
    item = await bob.post_photo(audience="public", lifetime_h="6")
    share = await _share(alice, item, audience="public", lifetime_h=48)
    own = await alice.post_photo("coffee.png", audience="public")
    fay_sock = await fay.socket()
    assert fay_sock.snapshot[0]["item_count"] == 2

    clock.advance(6 * 3600 * 1000 + 1)  # the server's sweeper ends both at the source's expiry
    removed = await fay_sock.next("story.removed", item_id=share["id"])
    assert removed["reason"] == "expired"
    update = await fay_sock.next("tray.update")
    assert update["entry"]["item_count"] == 1
    assert update["entry"]["first_unseen_id"] == own["id"]
    await _agrees(fay_sock, fay)
    await fay_sock.close()


async def test_narrowing_the_source_removes_the_share_for_everyone_outside_it(live):
    bob, alice, eve, fay = await _world(live)
    cleo = Client(live, "cleo")  # bob's close friend, follows alice
    await cleo.http.put(f"/me/following/{alice.id}")
    await bob.http.put(f"/me/close-friends/{cleo.id}")
    item = await bob.post_photo(audience="public")
    share = await _share(alice, item, audience="public")
    socks = {c: await c.socket() for c in (eve, fay, cleo)}
    assert socks[fay].snapshot[0]["item_count"] == socks[cleo].snapshot[0]["item_count"] == 1

    r = await bob.http.patch(f"/stories/{item['id']}", json={"audience": "close_friends"})
    assert r.status_code == 200
    removed = await socks[fay].next("story.removed", item_id=share["id"])
    assert removed["reason"] == "deleted" and removed["owner_id"] == alice.id
    assert (await socks[fay].next("tray.remove"))["owner_id"] == alice.id
    assert _about(await socks[cleo].drain(), share["id"]) == []
    assert await socks[eve].drain() == []

    # widening brings the share back into the ring (no story.new: like any audience change)
    r = await bob.http.patch(f"/stories/{item['id']}", json={"audience": "public"})
    assert r.status_code == 200
    entry = (await socks[fay].next("tray.update"))["entry"]
    assert (entry["owner"]["id"], entry["item_count"]) == (alice.id, 1)
    assert await socks[eve].drain() == []
    for client, sock in socks.items():
        await _agrees(sock, client)
        await sock.close()


async def test_a_graph_change_towards_the_source_owner_corrects_the_sharers_ring(live):
    bob, alice, _, fay = await _world(live)
    item = await bob.post_photo(audience="followers")
    await bob.http.patch(f"/stories/{item['id']}", json={"audience": "public"})
    share = await _share(alice, item, audience="public")
    own = await alice.post_photo("coffee.png", audience="public")
    await bob.http.patch(f"/stories/{item['id']}", json={"audience": "followers"})
    fay_sock = await fay.socket()
    assert [(e["item_count"], e["first_unseen_id"]) for e in fay_sock.snapshot] == [(1, own["id"])]

    await fay.http.put(f"/me/following/{bob.id}")  # now inside the source's audience
    counts = []
    while not counts or counts[-1] != 2:
        update = await fay_sock.next("tray.update")
        if update["entry"]["owner"]["id"] == alice.id:
            counts.append(update["entry"]["item_count"])
    assert fay_sock.tray()[alice.id]["first_unseen_id"] == share["id"]
    await bob.http.put(f"/me/hidden/{fay.id}")  # and out of it again
    while fay_sock.tray()[alice.id]["item_count"] != 1:
        await fay_sock.next("tray.update")
    await _agrees(fay_sock, fay)
    await fay_sock.close()
