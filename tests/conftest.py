"""Shared fixtures: a real Redis (embedded, or REDIS_URL), an app through its lifespan.

Every test gets its own key prefix and data dir, so tests never see each
other's data. The embedded redis-server is started once per session and
stopped by its PID at the end.

`cluster_url` is a local Redis Cluster of 3 primaries + 3 replicas
(`tests/cluster.py`), started on first use and stopped at the session's end.
With `STORIES_TEST_REDIS=cluster` in the environment the `settings` fixture (so
every app a test builds) uses it instead of the single Redis; tests that read
Redis through `redis_url` themselves still look at the single one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.core.clock import ManualClock
from server.core.settings import Settings
from server.store.embedded_redis import EmbeddedRedis

MEDIA = Path(__file__).parent / "media"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A SeaweedFS S3 gateway for the session (`tests/objectstore.py`), started on first use."""
    from tests.objectstore import running_object_store

    with running_object_store(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis+cluster://...` of a local 6-node Redis Cluster, started on first use."""
    from tests.cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


def on_cluster() -> bool:
    """True when `STORIES_TEST_REDIS=cluster`: apps in tests run on the test cluster."""
    return os.environ.get("STORIES_TEST_REDIS", "") == "cluster"


def sync_redis(url: str) -> Any:
    """A blocking client of `url` for a test's own reads: `redis.Redis`, or on a
    `redis+cluster://` URL a `redis.cluster.RedisCluster` (whose `scan_iter` walks
    every primary). Close it after use."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    from server.store.client import cluster_nodes, is_cluster_url

    if is_cluster_url(url):
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(url)])
    return redis.Redis.from_url(url)


@pytest.fixture
def settings(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("cluster_url") if on_cluster() else redis_url
    return Settings(
        redis_url=url,
        redis_prefix=f"t{uuid.uuid4().hex[:10]}:",
        data_dir=str(tmp_path / "data"),
        dev_login=True,
        jwt_secret="test-secret-" + "x" * 32,
        media_secret="media-secret",
        sweep_interval_s=0.05,
        posts_per_minute=1000,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def client(settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock)) as c:
        yield c


class Api:
    """A signed-in user talking to the app: `api.get(path)` etc. with their token."""

    def __init__(self, client: TestClient, token: str, user: dict[str, Any]) -> None:
        self.client = client
        self.token = token
        self.user = user
        self.id = user["id"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def __getattr__(self, method: str) -> Any:
        def call(path: str, **kw: Any) -> Any:
            headers = {**self.headers, **kw.pop("headers", {})}
            return self.client.request(method.upper(), "/api/v1" + path, headers=headers, **kw)

        return call

    def post_media(self, name: str, **fields: Any) -> Any:
        data = {k: str(v) for k, v in fields.pop("data", {}).items()}
        with (MEDIA / name).open("rb") as fh:
            return self.post("/stories", files={"media": (name, fh)}, data=data, **fields)

    def follow(self, other: Api) -> None:
        assert self.put(f"/me/following/{other.id}").status_code == 204


@pytest.fixture
def login(client: TestClient) -> Any:
    def _login(handle: str) -> Api:
        r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
        assert r.status_code == 200, r.text
        return Api(client, r.json()["token"], r.json()["user"])

    return _login


def assert_problem(resp: Any, status: int, slug: str) -> dict[str, Any]:
    """The response is problem+json with `status` and type ending in `slug`."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["type"].endswith("/" + slug), body
    assert body["title"] and body["detail"]
    return dict(body)
