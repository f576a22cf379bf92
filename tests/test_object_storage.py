"""Media in a real S3-compatible object store (SeaweedFS), through the whole app.

Each test puts its media under its own key prefix of the session's bucket; the
app runs through its lifespan on the real Redis, as in every other HTTP test.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.core.clock import ManualClock
from server.core.settings import Settings
from tests.conftest import MEDIA, Api, assert_problem
from tests.objectstore import GRPC_OFFSET, ObjectStore
from tests.ports import free_port_pairs


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def s3_settings(settings: Settings, object_store: ObjectStore, prefix: str) -> Settings:
    return dataclasses.replace(settings, **object_store.settings(prefix), archive_retention_s=60)


def _sign_in(client: TestClient, handle: str) -> Api:
    r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
    assert r.status_code == 200, r.text
    return Api(client, r.json()["token"], r.json()["user"])


def _local_media(settings: Settings) -> list[Path]:
    root = Path(settings.data_dir) / "media"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_posted_media_lives_in_the_bucket_and_is_served_with_ranges(s3_settings, object_store,
                                                                    prefix):  # fmt: skip
    with TestClient(create_app(s3_settings, ManualClock())) as client:
        bob = _sign_in(client, "bob")
        video = bob.post_media("city_vertical_h264.mp4").json()  # kept as sent: one upload
        photo = bob.post_media("rocket.jpg").json()
        keys = object_store.keys(prefix)
        assert len(keys) == 4 and all(k.startswith(f"media/{bob.id}/") for k in keys), keys
        assert _local_media(s3_settings) == [], "nothing is kept on local disk"
        assert not list((Path(s3_settings.data_dir) / "tmp").rglob("*.*")), "no scratch left"

        original = (MEDIA / "city_vertical_h264.mp4").read_bytes()
        url = video["media"]["url"]
        full = client.get(url)
        assert full.status_code == 200 and full.content == original
        assert full.headers["content-type"] == "video/mp4"
        assert int(full.headers["content-length"]) == len(original)
        assert "max-age=" in full.headers["cache-control"] and full.headers["etag"]

        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == original[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(original)}"
        tail = client.get(url, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == original[-10:]
        several = client.get(url, headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and several.content == original  # allowed by RFC 9110
        stale = client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"not-the-etag"'})
        assert stale.status_code == 200 and stale.content == original
        past = client.get(url, headers={"Range": f"bytes={len(original)}-"})
        assert_problem(past, 416, "range-not-satisfiable")
        head = client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(original))

        poster = client.get(photo["media"]["poster_url"])
        assert poster.status_code == 200 and poster.content[:2] == b"\xff\xd8"
        tampered = url.replace("sig=", "sig=x")
        assert_problem(client.get(tampered), 404, "not-found")


def test_media_redirect_answers_302_to_a_presigned_url(s3_settings, object_store):
    settings = dataclasses.replace(s3_settings, media_redirect=True)
    with TestClient(create_app(settings, ManualClock())) as client:
        bob = _sign_in(client, "bob")
        photo = bob.post_media("rocket.jpg").json()
        r = client.get(photo["media"]["url"], follow_redirects=False)
        assert r.status_code == 302
        location = r.headers["location"]
        assert location.startswith(object_store.endpoint) and "X-Amz-Signature=" in location
        assert r.headers["cache-control"] == "no-store"  # every fetch is checked again
        assert "X-Amz-Expires=60&" in location  # a deleted item's bytes stop within a minute
        fetched = httpx.get(location)
        assert fetched.status_code == 200 and fetched.content[:2] == b"\xff\xd8"
        forged = location.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert httpx.get(forged).status_code == 403  # the object store checks its signature


def test_deleted_media_is_removed_from_the_bucket_after_retention(s3_settings, object_store,
                                                                  prefix):  # fmt: skip
    clock = ManualClock()
    with TestClient(create_app(s3_settings, clock)) as client:
        bob = _sign_in(client, "bob")
        item = bob.post_media("rocket.jpg").json()
        assert len(object_store.keys(prefix)) == 2
        assert bob.delete(f"/stories/{item['id']}").status_code == 204
        assert client.get(item["media"]["url"]).status_code == 404  # at once, by the record
        clock.advance(61_000)  # past archive_retention_s: the sweeper removes the objects
        _wait(lambda: object_store.keys(prefix) == [], "objects removed")


def test_object_store_down_post_is_503_and_nothing_is_half_written(settings, s3_settings,
                                                                   object_store, prefix):  # fmt: skip
    [dead] = free_port_pairs(1, GRPC_OFFSET)
    down = dataclasses.replace(s3_settings, s3_endpoint=f"http://127.0.0.1:{dead}")
    with TestClient(create_app(down, ManualClock())) as client:
        bob = _sign_in(client, "bob")
        r = bob.post_media("rocket.jpg")
        body = assert_problem(r, 503, "storage-unavailable")
        assert int(r.headers["retry-after"]) >= 1 and "object storage" in body["detail"]
        assert bob.get("/me/archive").json()["items"] == []
        assert bob.get(f"/users/{bob.id}/stories").json()["items"] == []
        assert not list((Path(down.data_dir) / "tmp").rglob("*.*")), "no scratch left"
        assert client.get("/healthz").status_code == 200  # the process keeps serving


def test_object_store_down_reads_of_existing_media_are_503(s3_settings, object_store):
    with TestClient(create_app(s3_settings, ManualClock())) as up:
        item = _sign_in(up, "bob").post_media("rocket.jpg").json()
    [dead] = free_port_pairs(1, GRPC_OFFSET)
    down = dataclasses.replace(s3_settings, s3_endpoint=f"http://127.0.0.1:{dead}")
    with TestClient(create_app(down, ManualClock())) as client:  # same Redis: same item
        r = client.get(item["media"]["url"])
        assert_problem(r, 503, "storage-unavailable")
        assert int(r.headers["retry-after"]) >= 1


def _wait(check: Any, what: str, timeout_s: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_an_upload_whose_post_never_completes_is_removed_by_the_sweeper(s3_settings, object_store,
                                                                        prefix, monkeypatch):  # fmt: skip
    """The files reached the store but the post did not (its publish failed and so did the
    clean-up, as when the store answers late or the process dies): the item was put in the
    media-gc schedule before the upload, and the sweeper removes the files once that is due.
    The two failures are injected (a crash between two steps cannot be made on purpose)."""
    from server.core.errors import ServiceUnavailable, StorageUnavailable
    from server.stories.writer import UPLOAD_GRACE_MS, StoryWriter

    async def publish_fails(self, *args, **kwargs):
        raise ServiceUnavailable("redis went away mid-post")

    clock = ManualClock()
    with TestClient(create_app(s3_settings, clock)) as client:
        bob = _sign_in(client, "bob")
        storage = client.app.state.services.store.storage
        real_delete = storage.delete

        async def delete_fails(keys):
            raise StorageUnavailable("the store is gone too")

        monkeypatch.setattr(StoryWriter, "_publish_new", publish_fails)
        monkeypatch.setattr(storage, "delete", delete_fails)
        assert bob.post_media("rocket.jpg").status_code == 503
        assert len(object_store.keys(prefix)) == 2, "the orphaned files are in the bucket"
        monkeypatch.setattr(storage, "delete", real_delete)
        clock.advance(UPLOAD_GRACE_MS - 60_000)
        time.sleep(0.3)
        assert len(object_store.keys(prefix)) == 2, "not before the grace is over"
        clock.advance(120_000)
        _wait(lambda: object_store.keys(prefix) == [], "orphaned upload removed")


def test_serve_refuses_to_start_on_an_object_store_it_cannot_use(object_store, tmp_path):
    """A wrong secret, a missing bucket, a bucket-less URL: one line and a non-zero exit,
    before the server starts, instead of a server whose every post is a 503."""
    from tests.test_cli import stories

    good = object_store.settings("x")
    cases = {
        "refused the request": {**good, "s3_secret_access_key": "wrong"},
        "bucket does not exist": {**good, "object_store_url": "s3://no-such-bucket/x"},
        "s3://bucket[/prefix]": {**good, "object_store_url": "s3://"},
    }
    for expected, fields in cases.items():
        env = {f"STORIES_{k.upper()}": v for k, v in fields.items()}
        done = stories("serve", "--data-dir", str(tmp_path / "d"), cwd=tmp_path, env=env,
                       timeout_s=60)  # fmt: skip
        assert done.returncode != 0 and expected in done.stderr, (expected, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
