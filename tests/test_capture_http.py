"""Go live through the HTTP API: an aiortc client sends real footage (city.mpg) and a
tone to a real uvicorn server; the segment is posted and pushed like an upload."""

from __future__ import annotations

import asyncio

import aioice.ice
import av
import httpx
import pytest

from tests.conftest import MEDIA, assert_problem
from tests.live import Client, LiveServer
from tests.test_capture_core import Client as Camera


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """aioice does not offer 127.0.0.1 by itself; nothing may leave the machine."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
def live(settings):
    with LiveServer(settings) as server:
        yield server


async def test_go_live_posts_a_playable_segment_the_follower_sees(live, tmp_path):
    bob, alice = Client(live, "bob"), Client(live, "alice")
    await alice.http.put(f"/me/following/{bob.id}")
    alice_sock, bob_sock = await alice.socket(), await bob.socket()
    camera = Camera()
    r = await bob.http.post(
        "/captures", json={"sdp": await camera.offer_sdp(), "type": "offer", "caption": "live!"}
    )
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["type"] == "answer" and answer["max_duration_ms"] == 15_000
    await camera.accept(answer["sdp"])
    stopped = await camera.media_time(2.5)
    assert camera.video.first_sent_at is not None
    captured_ms = (stopped - camera.video.first_sent_at) * 1000
    r = await bob.http.post(f"/captures/{answer['id']}/stop")
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["source"] == "capture" and item["caption"] == "live!"
    assert item["media"]["mime"] == "video/mp4" and (
        item["media"]["width"],
        item["media"]["height"],
    ) == (720, 1280)
    assert abs(item["media"]["duration_ms"] - captured_ms) <= 300
    finished = await bob_sock.next("capture.finished")
    assert finished["capture_id"] == answer["id"] and finished["item"]["id"] == item["id"]
    assert (await alice_sock.next("story.new"))["item"]["id"] == item["id"]
    tray = (await alice.http.get("/tray")).json()["items"]
    assert tray[0]["owner"]["id"] == bob.id and tray[0]["has_unseen"]
    async with httpx.AsyncClient(base_url=live.url) as raw:
        body = (await raw.get(item["media"]["url"])).content
    path = tmp_path / "seg.mp4"
    path.write_bytes(body)
    with av.open(str(path)) as container:
        assert {s.type for s in container.streams} == {"video", "audio"}
        frames = sum(1 for _ in container.decode(video=0))
    assert frames > 30
    await camera.close()
    for s in (alice_sock, bob_sock):
        await s.close()


async def test_capture_limits_and_bad_offers(live):
    bob = Client(live, "bob")
    assert_problem(
        await bob.http.post("/captures", json={"sdp": "v=0 nonsense", "type": "offer"}),
        400,
        "malformed",
    )
    assert_problem(await bob.http.post("/captures", json={"type": "offer"}), 422, "invalid")
    camera, second = Camera(), Camera()
    r = await bob.http.post("/captures", json={"sdp": await camera.offer_sdp(), "type": "offer"})
    assert r.status_code == 201
    again = await bob.http.post(
        "/captures", json={"sdp": await second.offer_sdp(), "type": "offer"}
    )
    assert_problem(again, 409, "conflict")
    assert (await bob.http.delete(f"/captures/{r.json()['id']}")).status_code == 204
    assert_problem(await bob.http.post(f"/captures/{r.json()['id']}/stop"), 404, "not-found")
    await asyncio.gather(camera.close(), second.close())
    assert MEDIA.exists()
