"""Which wire a socket gets, and that each one delivers the same events.

Under uvicorn's sans-I/O protocol (what `stories serve` runs) the hub writes
shared frames to the transport; with permessage-deflate negotiated it
compresses per socket; under any other ASGI server (here Starlette's
TestClient) it sends standard `websocket.send` messages.
"""

from __future__ import annotations

import dataclasses

import orjson

from server.core.settings import Settings
from server.push.wire import AsgiWire, UvicornWire
from tests.live import Client, LiveServer


async def _negotiated_extensions(live: LiveServer) -> list[str]:
    """A follower (whose client offers permessage-deflate) gets a post; the extensions in use."""
    bob, alice = Client(live, "bob"), Client(live, "alice")
    await alice.http.put(f"/me/following/{bob.id}")
    sock = await alice.socket()
    (conn,) = [c for c in live.app.state.services.hub.conns if c.user_id == alice.id]
    assert isinstance(conn.wire, UvicornWire)
    item = await bob.post_photo()
    assert (await sock.next("story.new"))["item"]["id"] == item["id"]
    assert (await sock.next("tray.update"))["entry"]["has_unseen"] is True
    names = [ext.name for ext in sock.ws.protocol.extensions]
    await sock.close()
    for c in (alice, bob):
        await c.close()
    return names


async def test_uvicorn_sockets_get_shared_uncompressed_frames(settings: Settings) -> None:
    with LiveServer(settings) as live:
        assert await _negotiated_extensions(live) == []


async def test_direct_wire_compresses_when_deflate_is_on(settings: Settings) -> None:
    settings = dataclasses.replace(settings, ws_per_message_deflate=True)
    with LiveServer(settings) as live:
        assert await _negotiated_extensions(live) == ["permessage-deflate"]


def test_other_asgi_servers_get_the_asgi_wire(client, login) -> None:
    alice = login("alice")
    with client.websocket_connect(f"/ws?token={alice.token}") as ws:
        assert orjson.loads(ws.receive_text())["type"] == "hello"
        assert orjson.loads(ws.receive_text())["type"] == "tray.snapshot"
        hub = client.app.state.services.hub
        (conn,) = hub.conns
        assert isinstance(conn.wire, AsgiWire)
        ws.send_text('{"op": "ping"}')
        assert orjson.loads(ws.receive_text())["type"] == "pong"


async def test_ws_behind_a_path_prefix_keeps_the_direct_wire(settings: Settings) -> None:
    """uvicorn `--root-path /stories` (a proxy strips the prefix): `/ws` still takes the fast path."""
    live = LiveServer(settings)
    live.server.config.root_path = "/stories"
    with live:
        alice = Client(live, "alice")
        sock = await alice.socket()
        (conn,) = live.app.state.services.hub.conns
        assert isinstance(conn.wire, UvicornWire)
        await sock.send(op="ping")
        assert (await sock.next("pong"))["type"] == "pong"
        await sock.close()
        await alice.close()
