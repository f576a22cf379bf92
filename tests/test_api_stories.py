"""Stories through the HTTP API, in-process through the lifespan, on real media and Redis."""

from __future__ import annotations

import av
from PIL import Image

from tests.conftest import assert_problem


def test_post_photo_and_follower_sees_unseen_ring(login):
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    r = bob.post_media("rocket.jpg", data={"caption": "launch"})
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["owner"]["handle"] == "bob" and item["source"] == "upload"
    assert item["media"]["kind"] == "image" and item["media"]["mime"] == "image/jpeg"
    assert item["audience"] == "followers" and item["caption"] == "launch"
    assert item["view_count"] == 0 and item["seen"] is True
    tray = alice.get("/tray").json()["items"]
    assert [e["owner"]["handle"] for e in tray] == ["bob"]
    assert tray[0]["has_unseen"] and tray[0]["first_unseen_id"] == item["id"]
    seen_by_alice = alice.get(f"/stories/{item['id']}").json()
    assert seen_by_alice["seen"] is False and seen_by_alice["view_count"] is None


def test_exif_rotated_photo_is_upright(login, client):
    bob = login("bob")
    item = bob.post_media("chelsea_exif_orientation6.jpg").json()
    assert (item["media"]["width"], item["media"]["height"]) == (451, 300)
    body = client.get(item["media"]["url"]).content
    from io import BytesIO

    im = Image.open(BytesIO(body))
    assert im.size == (451, 300)
    assert not im.getexif(), "metadata must be stripped"


def test_h264_mp4_is_kept_and_served_with_range(login, client):
    bob = login("bob")
    item = bob.post_media("city_vertical_h264.mp4").json()
    media = item["media"]
    assert media["kind"] == "video" and media["mime"] == "video/mp4"
    assert (media["width"], media["height"]) == (720, 1280)
    assert 7000 <= media["duration_ms"] <= 8000
    original = (client.app.state.settings.data_path / "x").parent  # noqa: F841
    r = client.get(media["url"], headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100
    assert r.headers["content-type"] == "video/mp4"
    full = client.get(media["url"])
    assert full.content == open("tests/media/city_vertical_h264.mp4", "rb").read()
    assert "max-age=" in full.headers["cache-control"]
    max_age = int(full.headers["cache-control"].split("max-age=")[1])
    assert 0 < max_age <= 24 * 3600
    poster = client.get(media["poster_url"])
    assert poster.status_code == 200 and poster.content[:2] == b"\xff\xd8"


def test_mpeg2_is_transcoded_to_h264(login, client, tmp_path):
    bob = login("bob")
    r = bob.post_media("city.mpg")
    assert r.status_code == 201, r.text
    media = r.json()["media"]
    assert media["mime"] == "video/mp4"
    out = tmp_path / "out.mp4"
    out.write_bytes(client.get(media["url"]).content)
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_webm_is_kept(login, client):
    item = login("bob").post_media("city_vp8.webm").json()
    assert item["media"]["mime"] == "video/webm"
    body = client.get(item["media"]["url"]).content
    assert body == open("tests/media/city_vp8.webm", "rb").read()


def test_disguised_text_file_is_refused_and_nothing_stored(login, client, tmp_path, settings):
    bob = login("bob")
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is not a picture")
    with fake.open("rb") as fh:
        r = bob.post("/stories", files={"media": ("photo.jpg", fh, "image/jpeg")})
    assert_problem(r, 415, "unsupported-media")
    assert bob.get(f"/users/{bob.id}/stories").json()["items"] == []
    media_dir = settings.data_path / "media"
    assert not media_dir.exists() or not any(media_dir.rglob("*"))
    assert not [q for p in (settings.data_path / "tmp").iterdir() for q in p.iterdir()]


def test_truncated_video_is_refused(login, tmp_path):
    bob = login("bob")
    data = open("tests/media/city_vertical_h264.mp4", "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with cut.open("rb") as fh:
        r = bob.post("/stories", files={"media": ("cut.mp4", fh)})
    assert_problem(r, 422, "invalid-media")


def test_bad_fields(login):
    bob = login("bob")
    assert_problem(bob.post_media("rocket.jpg", data={"audience": "everyone"}), 422, "invalid")
    assert_problem(bob.post_media("rocket.jpg", data={"lifetime_h": "7"}), 422, "invalid")
    assert_problem(bob.post_media("rocket.jpg", data={"caption": "x" * 2201}), 422, "invalid")
    r = bob.post(
        "/stories",
        content=b"--zz\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    assert r.status_code == 400 or r.status_code == 422
    assert bob.get(f"/users/{bob.id}/stories").json()["items"] == []


def test_seen_up_to_across_items_and_devices(login):
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    ids = [bob.post_media(n).json()["id"] for n in ("rocket.jpg", "coffee.png", "chelsea.png")]
    assert alice.post(f"/stories/{ids[1]}/seen").status_code == 204
    stories = alice.get(f"/users/{bob.id}/stories").json()
    assert [i["seen"] for i in stories["items"]] == [True, True, False]
    assert stories["first_unseen_id"] == ids[2]
    # idempotent; a second device (new token, same user) sees the same state
    assert alice.post(f"/stories/{ids[1]}/seen").status_code == 204
    alice2 = login("alice")
    entry = alice2.get("/tray").json()["items"][0]
    assert entry["has_unseen"] and entry["first_unseen_id"] == ids[2]
    assert alice2.post(f"/stories/{ids[2]}/seen").status_code == 204
    assert alice.get("/tray").json()["items"][0]["has_unseen"] is False
    counts = [bob.get(f"/stories/{i}").json()["view_count"] for i in ids]
    assert counts == [0, 1, 1], "a view is recorded for the items shown, not those skipped"


def test_a_view_is_recorded_only_for_the_item_shown(login):
    """Opening bob's ring at item 3 of 3 makes all three seen (the ring is grey) but
    alice a viewer of item 3 only; showing item 1 later adds her to item 1 only."""
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    ids = [bob.post_media(n).json()["id"] for n in ("rocket.jpg", "coffee.png", "chelsea.png")]
    assert alice.post(f"/stories/{ids[2]}/seen").status_code == 204
    stories = alice.get(f"/users/{bob.id}/stories").json()
    assert [i["seen"] for i in stories["items"]] == [True, True, True]
    assert alice.get("/tray").json()["items"][0]["has_unseen"] is False

    def viewers(item: str) -> list[str]:
        page = bob.get(f"/stories/{item}/viewers").json()
        assert page["count"] == len(page["items"])
        return [v["user"]["id"] for v in page["items"]]

    assert [viewers(i) for i in ids] == [[], [], [alice.id]]
    assert [bob.get(f"/stories/{i}").json()["view_count"] for i in ids] == [0, 0, 1]
    # going back to item 1 (already seen by the pointer) shows it: now it has its view
    assert alice.post(f"/stories/{ids[0]}/seen").status_code == 204
    assert [viewers(i) for i in ids] == [[alice.id], [], [alice.id]]
    assert alice.get("/tray").json()["items"][0]["has_unseen"] is False  # the pointer stays
    assert alice.post(f"/stories/{ids[0]}/seen").status_code == 204  # idempotent
    assert [len(viewers(i)) for i in ids] == [1, 0, 1]


def test_viewers_paging_newest_first(login, clock):
    bob = login("bob")
    item = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    viewers = [login(f"viewer{n}") for n in range(5)]
    for v in viewers:
        clock.advance(1000)
        assert v.post(f"/stories/{item['id']}/seen").status_code == 204
    viewers[1].post(f"/stories/{item['id']}/reactions", json={"emoji": "🔥"})
    page = bob.get(f"/stories/{item['id']}/viewers?limit=2").json()
    assert page["count"] == 5
    handles = [e["user"]["handle"] for e in page["items"]]
    cursor = page["next_cursor"]
    while cursor:
        page = bob.get(
            f"/stories/{item['id']}/viewers", params={"limit": 2, "cursor": cursor}
        ).json()
        handles += [e["user"]["handle"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert handles == [f"viewer{n}" for n in (4, 3, 2, 1, 0)]
    full = bob.get(f"/stories/{item['id']}/viewers").json()["items"]
    assert {e["user"]["handle"]: e["reaction"] for e in full}["viewer1"] == "🔥"
    assert_problem(viewers[0].get(f"/stories/{item['id']}/viewers"), 403, "forbidden")


def test_tray_order(login, clock):
    me, a, b, c = login("me"), login("aa"), login("bb"), login("cc")
    for other in (a, b, c):
        me.follow(other)
    a_item = a.post_media("rocket.jpg").json()
    clock.advance(1000)
    b.post_media("coffee.png")
    clock.advance(1000)
    c_item = c.post_media("chelsea.png").json()
    clock.advance(1000)
    me.post_media("astronaut.png")
    me.post(f"/stories/{c_item['id']}/seen")
    me.post(f"/stories/{a_item['id']}/seen")
    order = [(e["owner"]["handle"], e["has_unseen"]) for e in me.get("/tray").json()["items"]]
    assert order == [("me", False), ("bb", True), ("cc", False), ("aa", False)]


def test_share_to_story_with_attribution(login):
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    original = bob.post_media("rocket.jpg", data={"audience": "public"}).json()
    r = alice.post(f"/stories/{original['id']}/share", json={"caption": "look"})
    assert r.status_code == 201, r.text
    shared = r.json()
    assert shared["source"] == "share" and shared["owner"]["handle"] == "alice"
    assert shared["shared_from"]["item_id"] == original["id"]
    assert shared["shared_from"]["owner"]["handle"] == "bob"


def test_posted_and_shared_items_answer_what_a_read_answers(login):
    """The writer renders a new item once; the 201 body is what GET gives its owner."""
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    posted = bob.post_media("city_vp8.webm", data={"audience": "public", "caption": "c"}).json()
    assert bob.get(f"/stories/{posted['id']}").json() == posted
    shared = alice.post(f"/stories/{posted['id']}/share", json={}).json()
    assert alice.get(f"/stories/{shared['id']}").json() == shared


def test_delete_and_archive(login, client):
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    item = bob.post_media("rocket.jpg").json()
    assert_problem(alice.delete(f"/stories/{item['id']}"), 403, "forbidden")
    assert bob.delete(f"/stories/{item['id']}").status_code == 204
    assert_problem(alice.get(f"/stories/{item['id']}"), 404, "not-found")
    assert client.get(item["media"]["url"]).status_code == 404
    assert alice.get("/tray").json()["items"] == []
    archive = bob.get("/me/archive").json()["items"]
    assert [a["id"] for a in archive] == [item["id"]] and archive[0]["status"] == "deleted"
    assert archive[0]["ended_at"] is not None
    assert client.get(archive[0]["media"]["url"]).status_code == 200


def test_expiry_filters_on_read_and_sweeper_archives(login, client, clock):
    bob, alice = login("bob"), login("alice")
    alice.follow(bob)
    item = bob.post_media("rocket.jpg", data={"lifetime_h": "6"}).json()
    clock.advance(6 * 3600 * 1000 + 1)
    assert alice.get("/tray").json()["items"] == []
    assert_problem(alice.get(f"/stories/{item['id']}"), 404, "not-found")
    assert client.get(item["media"]["url"]).status_code == 404
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not bob.get("/me/archive").json()["items"]:
        time.sleep(0.05)
    archive = bob.get("/me/archive").json()["items"]
    assert archive and archive[0]["status"] == "expired"


def test_idempotent_post(login):
    bob = login("bob")
    first = bob.post_media("rocket.jpg", headers={"Idempotency-Key": "k1"})
    again = bob.post_media("rocket.jpg", headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert len(bob.get(f"/users/{bob.id}/stories").json()["items"]) == 1
