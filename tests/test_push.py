"""Real-time push end to end: real uvicorn, real WebSocket clients, real Redis pub/sub."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets

from tests.live import Client, LiveServer


@pytest.fixture
def live(settings):
    with LiveServer(settings) as server:
        yield server


async def test_hello_snapshot_new_story_and_seen_by(live):
    bob, alice = Client(live, "bob"), Client(live, "alice")
    await alice.http.put(f"/me/following/{bob.id}")
    a_sock, b_sock = await alice.socket(), await bob.socket()
    assert a_sock.snapshot == []
    item = await bob.post_photo()
    new = await a_sock.next("story.new")
    assert new["item"]["id"] == item["id"] and new["item"]["seen"] is False and "ts" in new
    update = await a_sock.next("tray.update")
    assert update["entry"]["owner"]["id"] == bob.id and update["entry"]["has_unseen"] is True
    own = await b_sock.next("tray.update")
    assert own["entry"]["owner"]["id"] == bob.id and own["entry"]["has_unseen"] is False
    await a_sock.send(op="seen", item=item["id"])
    viewed = await b_sock.next("story.viewed")
    assert viewed["viewer"]["id"] == alice.id and viewed["view_count"] == 1
    count = await b_sock.next("story.view_count")
    assert count == {**count, "item_id": item["id"], "view_count": 1}
    for s in (a_sock, b_sock):
        await s.close()
    for c in (alice, bob):
        await c.close()


async def test_one_seen_sends_the_owner_one_story_viewed_for_the_item_shown(live):
    """A viewer opening bob's ring at item 4 is a viewer of item 4, not of items 1-3."""
    bob, alice = Client(live, "bob"), Client(live, "alice")
    await alice.http.put(f"/me/following/{bob.id}")
    items = [await bob.post_photo() for _ in range(4)]
    b_sock, a_sock = await bob.socket(), await alice.socket()
    await a_sock.send(op="seen", item=items[-1]["id"])
    await a_sock.send(op="ping")
    await a_sock.next("pong")
    events = await b_sock.drain(0.8)  # past the 250 ms view-count window
    viewed = [(e["item_id"], e["view_count"]) for e in events if e["type"] == "story.viewed"]
    assert viewed == [(items[-1]["id"], 1)]
    counts = {e["item_id"] for e in events if e["type"] == "story.view_count"}
    assert counts == {items[-1]["id"]}
    for s in (a_sock, b_sock):
        await s.close()
    for c in (alice, bob):
        await c.close()


async def test_seen_on_one_device_updates_the_other(live):
    bob, alice = Client(live, "bob"), Client(live, "alice")
    await alice.http.put(f"/me/following/{bob.id}")
    item = await bob.post_photo()
    phone, laptop = await alice.socket(), await alice.socket()
    assert laptop.snapshot[0]["has_unseen"] is True
    await phone.send(op="seen", item=item["id"])
    update = await laptop.next("tray.update")
    assert update["entry"]["has_unseen"] is False and update["entry"]["first_unseen_id"] is None
    await phone.close()
    await laptop.close()


async def test_audience_close_friends_hidden_and_unfollow(live):
    owner, friend, follower, hidden = (Client(live, h) for h in ("owner", "friend", "fan", "hid"))
    for c in (friend, follower, hidden):
        await c.http.put(f"/me/following/{owner.id}")
    await owner.http.put(f"/me/close-friends/{friend.id}")
    await owner.http.put(f"/me/hidden/{hidden.id}")
    socks = {c: await c.socket() for c in (friend, follower, hidden)}
    cf_item = await owner.post_photo(audience="close_friends")
    assert (await socks[friend].next("story.new"))["item"]["id"] == cf_item["id"]
    public = await owner.post_photo(audience="public")
    assert (await socks[follower].next("story.new"))["item"]["id"] == public["id"]
    follower_events = await socks[follower].drain()
    assert all(e.get("item", {}).get("id") != cf_item["id"] for e in follower_events)
    hidden_events = await socks[hidden].drain()
    assert hidden_events == [], hidden_events
    await follower.http.delete(f"/me/following/{owner.id}")
    removed = await socks[follower].next("tray.remove")
    assert removed["owner_id"] == owner.id
    await owner.post_photo()
    assert [e for e in await socks[follower].drain() if e["type"] == "story.new"] == []
    for s in socks.values():
        await s.close()


async def test_delete_pushes_removal(live):
    bob, alice = Client(live, "bob"), Client(live, "alice")
    await alice.http.put(f"/me/following/{bob.id}")
    item = await bob.post_photo()
    sock = await alice.socket()
    await bob.http.delete(f"/stories/{item['id']}")
    removed = await sock.next("story.removed")
    assert removed["item_id"] == item["id"] and removed["reason"] == "deleted"
    assert (await sock.next("tray.remove"))["owner_id"] == bob.id
    await sock.close()


async def test_reactions_replies_and_ping(live):
    bob, alice = Client(live, "bob"), Client(live, "alice")
    item = await bob.post_photo(audience="public")
    sock = await bob.socket()
    await alice.http.post(f"/stories/{item['id']}/reactions", json={"emoji": "😍"})
    reaction = await sock.next("story.reaction")
    assert reaction["emoji"] == "😍" and reaction["user"]["id"] == alice.id
    await alice.http.post(f"/stories/{item['id']}/replies", json={"text": "nice"})
    assert (await sock.next("story.reply"))["text"] == "nice"
    await sock.send(op="ping")
    assert (await sock.next("pong"))["type"] == "pong"
    await sock.close()


async def test_auth_by_first_frame_and_refusals(live):
    alice = Client(live, "alice")
    async with websockets.connect(live.ws_url) as ws:
        await ws.send(orjson.dumps({"op": "auth", "token": alice.token}).decode())
        assert orjson.loads(await ws.recv())["type"] == "hello"
    for query in ("?token=garbage", "?token="):  # an empty token fails at once, no auth wait
        async with websockets.connect(live.ws_url + query) as ws:
            with pytest.raises(websockets.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 2)
            assert info.value.rcvd.code == 4001, query
    long_op = orjson.dumps({"op": "é" * 60}).decode()  # its echo in the reason: 120 bytes+
    for frame in ("not json", orjson.dumps({"op": "auth", "token": alice.token}).decode(), long_op):
        async with websockets.connect(f"{live.ws_url}?token={alice.token}") as ws:
            await ws.send(frame)  # malformed; auth once signed in
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await ws.recv()
            assert info.value.rcvd.code == 1008, frame


async def test_view_counts_are_coalesced_and_last_is_exact(live):
    bob = Client(live, "bob")
    item = await bob.post_photo(audience="public")
    sock = await bob.socket()
    viewers = [Client(live, f"v{n}") for n in range(12)]
    await asyncio.gather(*(v.http.post(f"/stories/{item['id']}/seen") for v in viewers))
    events = await sock.drain(0.8)
    counts = [e["view_count"] for e in events if e["type"] == "story.view_count"]
    assert counts and counts[-1] == 12
    assert len(counts) < 12
    assert len([e for e in events if e["type"] == "story.viewed"]) == 12
    await sock.close()
