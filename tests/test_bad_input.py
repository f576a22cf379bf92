"""Bad input: the exact status and problem type, and proof that nothing was stored.

"Nothing stored" means: no item in the user's stories or archive, no file under
`<data_dir>/media`, `<data_dir>/tmp` empty, and no story key in Redis.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from server.app import create_app
from server.core.clock import ManualClock
from server.core.keys import BUCKETS, Keys
from server.core.settings import Settings
from tests.conftest import MEDIA, Api, assert_problem, sync_redis


@contextmanager
def custom_app(
    settings: Settings, clock: ManualClock | None = None, **changes: Any
) -> Iterator[tuple[Settings, Callable[[str], Api]]]:
    """An app like the `client` fixture's, with `changes` applied to the test's settings."""
    s = dataclasses.replace(settings, **changes)
    with TestClient(create_app(s, clock)) as c:

        def login(handle: str) -> Api:
            r = c.post("/api/v1/auth/dev-login", json={"handle": handle})
            assert r.status_code == 200, r.text
            return Api(c, r.json()["token"], r.json()["user"])

        yield s, login


def assert_nothing_stored(api: Api, settings: Settings) -> None:
    assert api.get(f"/users/{api.id}/stories").json()["items"] == []
    assert api.get("/me/archive").json()["items"] == []
    media = settings.data_path / "media"
    assert not media.exists() or not [p for p in media.rglob("*") if p.is_file()]
    tmp = settings.data_path / "tmp"
    assert not tmp.exists() or not [q for p in tmp.iterdir() for q in p.iterdir()]  # per process
    r = sync_redis(settings.redis_url or "")
    keys = Keys(settings.redis_prefix)
    try:
        assert list(r.scan_iter(f"{settings.redis_prefix}st:*")) == []
        assert sum(r.zcard(keys.expiry_schedule(n)) for n in range(BUCKETS)) == 0
    finally:
        r.close()


def post_bytes(api: Api, data: bytes, name: str = "upload.jpg", **fields: Any) -> Any:
    return api.post("/stories", files={"media": (name, io.BytesIO(data))}, data=fields)


# --- rejected uploads, nothing stored ---------------------------------------------------


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("make", "name", "status", "slug"),
    [
        (lambda: b"just some text, honest\n" * 20, "photo.jpg", 415, "unsupported-media"),
        (lambda: b"<html><body>hi</body></html>", "clip.mp4", 415, "unsupported-media"),
        (_gif, "anim.mp4", 415, "unsupported-media"),
        (lambda: b"", "empty.jpg", 422, "invalid-media"),
        (lambda: (MEDIA / "rocket.jpg").read_bytes()[:4000], "rocket.jpg", 422, "invalid-media"),
        (
            lambda: (MEDIA / "city_vertical_h264.mp4").read_bytes()[:300_000],
            "city.mp4",
            422,
            "invalid-media",
        ),
        (lambda: (MEDIA / "city_vp8.webm").read_bytes()[:2000], "city.webm", 422, "invalid-media"),
    ],
    ids=[
        "text-as-jpg",
        "html-as-mp4",
        "gif",
        "empty",
        "truncated-jpeg",
        "truncated-mp4",
        "truncated-webm",
    ],
)
def test_unusable_file_is_refused_and_nothing_stored(login, settings, make, name, status, slug):
    bob = login("bob")
    assert_problem(post_bytes(bob, make(), name, caption="x"), status, slug)
    assert_nothing_stored(bob, settings)


def test_too_long_video_is_422(settings):
    with custom_app(settings, max_video_ms=2000) as (s, login):
        bob = login("bob")
        r = bob.post_media("city_vertical_h264.mp4")
        body = assert_problem(r, 422, "invalid-media")
        assert "2" in body["detail"]
        assert_nothing_stored(bob, s)


def test_too_big_upload_is_413_declared_or_streamed(settings):
    size = (MEDIA / "rocket.jpg").stat().st_size
    # far over: refused from Content-Length alone; just over: refused after parsing
    for limit in (size // 10, size - 1000):
        with custom_app(settings, max_upload_bytes=limit) as (s, login):
            bob = login("bob")
            assert_problem(bob.post_media("rocket.jpg"), 413, "too-large")
            assert_nothing_stored(bob, s)


def test_too_many_pixels_is_422(settings):
    with custom_app(settings, max_pixels=100_000) as (s, login):
        bob = login("bob")
        for name in ("rocket.jpg", "city_vertical_h264.mp4"):
            assert_problem(bob.post_media(name), 422, "invalid-media")
        assert_nothing_stored(bob, s)


def test_upload_without_content_length_is_411(login, settings):
    bob = login("bob")
    payload = (MEDIA / "rocket.jpg").read_bytes()

    def chunks() -> Iterator[bytes]:
        yield b'--zz\r\nContent-Disposition: form-data; name="media"; filename="a.jpg"\r\n\r\n'
        yield payload
        yield b"\r\n--zz--\r\n"

    r = bob.post(
        "/stories", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_problem(r, 411, "length-required")
    assert_nothing_stored(bob, settings)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"garbage", "multipart/form-data; boundary=zz"),
        (b"garbage", "multipart/form-data"),
        (b'{"media": "rocket.jpg"}', "application/json"),
        (b"media=rocket.jpg", "application/x-www-form-urlencoded"),
        (
            b'--zz\r\nContent-Disposition: form-data; filename="a.jpg"\r\n\r\nabc\r\n--zz--\r\n',
            "multipart/form-data; boundary=zz",
        ),
    ],
    ids=["garbage", "no-boundary", "json", "urlencoded", "part-without-name"],
)
def test_malformed_multipart_is_400(login, settings, body, content_type):
    bob = login("bob")
    r = bob.post("/stories", content=body, headers={"content-type": content_type})
    assert_problem(r, 400, "malformed")
    assert_nothing_stored(bob, settings)


def test_missing_media_field_is_422(login, settings):
    bob = login("bob")
    for files in (None, {"photo": ("rocket.jpg", (MEDIA / "rocket.jpg").read_bytes())}):
        r = bob.post("/stories", data={"caption": "no file"}, files=files or {"x": ("", b"")})
        body = assert_problem(r, 422, "invalid")
        assert body["errors"] == [{"field": "media", "detail": "a file is required"}]
    # media sent as a plain field, not a file
    r = bob.post(
        "/stories",
        content=b'--zz\r\nContent-Disposition: form-data; name="media"\r\n\r\nabc\r\n--zz--\r\n',
        headers={"content-type": "multipart/form-data; boundary=zz"},
    )
    assert_problem(r, 422, "invalid")
    assert_nothing_stored(bob, settings)


def test_bad_fields_on_upload_store_nothing(login, settings):
    bob = login("bob")
    for fields in (
        {"caption": "x" * 2201},
        {"caption": "bell\x07"},
        {"audience": "friends"},
        {"lifetime_h": "0"},
        {"lifetime_h": "24h"},
    ):
        r = bob.post_media("rocket.jpg", data=fields)
        assert_problem(r, 422, "invalid")
        assert r.json()["errors"][0]["field"] == next(iter(fields))
    long_key = {"Idempotency-Key": "k" * 201}
    assert_problem(bob.post_media("rocket.jpg", headers=long_key), 422, "invalid")
    assert_nothing_stored(bob, settings)


# --- JSON bodies --------------------------------------------------------------------------


@pytest.fixture
def story(login) -> tuple[Api, Api, str]:
    """(owner bob, follower ann, id of bob's public photo)."""
    bob, ann = login("bob"), login("ann")
    ann.follow(bob)
    r = bob.post_media("rocket.jpg", data={"audience": "public"})
    assert r.status_code == 201, r.text
    return bob, ann, r.json()["id"]


def test_malformed_and_non_object_json_is_400(story, client):
    bob, ann, item = story
    targets = [
        ("post", f"/stories/{item}/reactions"),
        ("post", f"/stories/{item}/replies"),
        ("post", f"/stories/{item}/share"),
        ("patch", f"/stories/{item}"),
        ("patch", "/me"),
    ]
    bodies = [
        b"{not json",
        b'{"emoji": "\xf0\x9f"}',
        b"[1, 2]",
        b'["emoji"]',
        b'"text"',
        b"42",
        b"null",
        b"\xff\xfe",
    ]
    for method, path in targets:
        api = bob if method == "patch" else ann
        for body in bodies:
            r = getattr(api, method)(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert_problem(r, 400, "malformed")
    r = client.post("/api/v1/auth/dev-login", content=b"[]")
    assert_problem(r, 400, "malformed")
    # nothing happened to the item
    assert bob.get(f"/stories/{item}/viewers").json()["count"] == 0
    assert bob.get(f"/stories/{item}/replies").json()["items"] == []
    assert ann.get(f"/users/{ann.id}/stories").json()["items"] == []
    assert bob.get(f"/stories/{item}").json()["audience"] == "public"


def test_json_body_too_big_is_413(story):
    _, ann, item = story
    r = ann.post(f"/stories/{item}/replies", json={"text": "x" * 70_000})
    assert_problem(r, 413, "too-large")


@pytest.mark.parametrize(
    "bad_id",
    [
        "nope",
        "u_nobody.1",
        "a.b.c",
        "u_x.99999999999999999999",
        "u_x.-1",
        "u_x.",
        ".1",
        "u x.1",
        "é.1",
        "x" * 300,
        "u_x.1.2",
        "u_x.01x",
        "%00",
    ],
)
def test_unknown_item_ids_are_404(story, bad_id):
    bob, ann, _ = story
    for api, method, suffix, body in [
        (ann, "get", "", None),
        (bob, "delete", "", None),
        (bob, "patch", "", {"audience": "public"}),
        (ann, "post", "/seen", None),
        (bob, "get", "/viewers", None),
        (ann, "post", "/reactions", {"emoji": "🔥"}),
        (ann, "post", "/replies", {"text": "hi"}),
        (bob, "get", "/replies", None),
        (ann, "post", "/share", {}),
    ]:
        kw = {"json": body} if body is not None else {}
        r = getattr(api, method)(f"/stories/{bad_id}{suffix}", **kw)
        assert_problem(r, 404, "not-found")


def test_unknown_user_is_404(story):
    _, ann, _ = story
    for ref in ("u_nobody", "nobody", "x" * 200):
        assert_problem(ann.get(f"/users/{ref}/stories"), 404, "not-found")
        assert_problem(ann.get(f"/users/{ref}"), 404, "not-found")
        assert_problem(ann.put(f"/me/following/{ref}"), 404, "not-found")


def test_oversized_or_bad_caption_on_share_is_422(story):
    _, ann, item = story
    for caption in ("x" * 2201, "a\x00b", 5, ["x"]):
        r = ann.post(f"/stories/{item}/share", json={"caption": caption})
        assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "caption"
    assert ann.get(f"/users/{ann.id}/stories").json()["items"] == []
    typo = ann.post(f"/stories/{item}/share", json={"captoin": "x"})
    assert assert_problem(typo, 422, "invalid")["errors"][0]["field"] == "captoin"
    ok = ann.post(f"/stories/{item}/share", json={"caption": "y" * 2200})
    assert ok.status_code == 201 and len(ok.json()["caption"]) == 2200


def test_reply_too_long_or_empty_or_with_controls_is_422(story):
    bob, ann, item = story
    for text in ("x" * 1001, "", "   ", None, 7, ["hi"], "a\x00b", "\x1b[31mred"):
        body = assert_problem(
            ann.post(f"/stories/{item}/replies", json={"text": text}), 422, "invalid"
        )
        assert body["errors"][0]["field"] == "text"
    assert_problem(ann.post(f"/stories/{item}/replies", json={}), 422, "invalid")
    assert bob.get(f"/stories/{item}/replies").json()["items"] == []
    assert ann.post(f"/stories/{item}/replies", json={"text": "x" * 1000}).status_code == 201
    assert ann.post(f"/stories/{item}/replies", json={"text": "two\nlines"}).status_code == 201


def test_emoji_that_is_text_is_422(story):
    bob, ann, item = story
    for emoji in ("ok", "🔥a", "1", " ", "", "🔥 ", "🔥" * 17, 5, None, "\u200b", "<3",
                  "\u200d", "🔥\u200d", "\ufe0f", "🔥🔥", "🇳🇿🇫🇷", "1\ufe0f"):  # fmt: skip
        r = ann.post(f"/stories/{item}/reactions", json={"emoji": emoji})
        assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "emoji"
    viewers = bob.get(f"/stories/{item}/viewers").json()
    assert viewers["count"] == 0
    for emoji in ("🔥", "❤️", "👍🏽", "👨‍👩‍👧", "🇳🇿", "1️⃣", "#️⃣", "❤️‍🔥", "🏳️‍🌈"):
        assert ann.post(f"/stories/{item}/reactions", json={"emoji": emoji}).status_code == 204


@pytest.mark.parametrize("limit", ["0", "1000", "101", "-1", "abc", "1.5", ""])
def test_bad_limit_is_422(story, limit):
    bob, _, item = story
    for path in (
        "/me/archive",
        "/me/following",
        "/me/followers",
        "/me/close-friends",
        "/me/hidden",
        f"/stories/{item}/viewers",
    ):
        r = bob.get(path, params={"limit": limit})
        assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "limit"


def test_bad_cursor_is_422(story):
    import base64

    bob, _, item = story
    b64 = lambda s: base64.urlsafe_b64encode(s).decode().rstrip("=")  # noqa: E731
    for cursor in ("!!!", "zz", b64(b"x:1"), b64(b"o:abc"), b64(b"o:-1"), b64(b"\xff\xfe")):
        for path in ("/me/archive", "/me/following", "/me/close-friends"):
            r = bob.get(path, params={"cursor": cursor})
            assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "cursor"
    for cursor in ("abc", "123:", "x:u_1", "-5:u_1"):
        r = bob.get(f"/stories/{item}/viewers", params={"cursor": cursor})
        assert assert_problem(r, 422, "invalid")["errors"][0]["field"] == "cursor"
    # limits at the edges are fine
    for limit in ("1", "100"):
        assert bob.get("/me/following", params={"limit": limit}).status_code == 200


# --- rate limit --------------------------------------------------------------------------


def test_rate_limit_third_post_is_429_with_retry_after(settings):
    real_ms = time.time_ns() // 1_000_000 - 60_000  # tokens are checked against real time
    clock = ManualClock(real_ms - real_ms % 60_000 + 15_000)  # 15 s into a clock minute
    with custom_app(settings, clock, posts_per_minute=2) as (_, login):
        bob = login("bob")
        assert bob.post_media("rocket.jpg").status_code == 201
        assert bob.post_media("coffee.png").status_code == 201
        r = bob.post_media("chelsea.png")
        assert_problem(r, 429, "rate-limited")
        assert r.headers["retry-after"] == "45"
        assert len(bob.get(f"/users/{bob.id}/stories").json()["items"]) == 2
        # sharing counts as posting
        assert_problem(bob.post(f"/stories/{bob.id}.1/share", json={}), 429, "rate-limited")
        # another user has their own budget
        assert login("ann").post_media("rocket.jpg").status_code == 201
        clock.advance(45_000)
        assert bob.post_media("chelsea.png").status_code == 201


def test_replies_reactions_and_audience_changes_are_rate_limited(settings):
    real_ms = time.time_ns() // 1_000_000 - 60_000  # tokens are checked against real time
    clock = ManualClock(real_ms - real_ms % 60_000 + 15_000)
    with custom_app(settings, clock, posts_per_minute=2, messages_per_minute=3) as (_, login):
        ann, bob = login("ann"), login("bob")
        bob.follow(ann)
        item = ann.post_media("rocket.jpg").json()["id"]
        sent = [bob.post(f"/stories/{item}/replies", json={"text": "hi"}).status_code,
                bob.post(f"/stories/{item}/reactions", json={"emoji": "🔥"}).status_code,
                bob.post(f"/stories/{item}/replies", json={"text": "again"}).status_code]  # fmt: skip
        assert sent == [201, 204, 201]
        r = bob.post(f"/stories/{item}/reactions", json={"emoji": "🔥"})
        assert_problem(r, 429, "rate-limited")
        assert r.headers["retry-after"] == "45"
        assert len(ann.get(f"/stories/{item}/replies").json()["items"]) == 2, "nothing half-done"
        for audience in ("public", "followers"):
            assert ann.patch(f"/stories/{item}", json={"audience": audience}).status_code == 200
        assert_problem(ann.patch(f"/stories/{item}", json={"audience": "public"}), 429,
                       "rate-limited")  # fmt: skip
        assert ann.get(f"/stories/{item}").json()["audience"] == "followers"


def test_trailing_slash_is_a_problem_not_a_redirect(client):
    r = client.get("/api/v1/tray/", follow_redirects=False)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
