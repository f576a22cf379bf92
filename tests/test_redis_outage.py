"""Redis lost while the app runs: 503 + Retry-After, then service resumes by itself.

The app gets its OWN embedded redis-server (not the session one), which the test
kills with SIGKILL mid-test. A new redis-server on the same data dir (AOF, same
unix socket path) brings the data back; the app reconnects without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.core.settings import Settings
from server.store.embedded_redis import EmbeddedRedis
from server.stories.sweeper import Sweeper
from tests.conftest import Api, assert_problem


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[EmbeddedRedis]]:
    """A list holding the current EmbeddedRedis; every one started is stopped at the end."""
    started: list[EmbeddedRedis] = []
    started.append(EmbeddedRedis(tmp_path_factory.mktemp("ro")))
    started[0].start()
    try:
        yield started
    finally:
        for embedded in started:
            embedded.stop()


def _until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = call()
    return result, time.monotonic() - t0


def test_redis_killed_then_restarted(own_redis, settings: Settings, tmp_path: Path):
    first = own_redis[0]
    assert first._sock_dir is None, "socket path must stay the same across restarts"
    data_dir = first.dir.parent
    s = dataclasses.replace(settings, redis_url=first.url, redis_retry_after_s=3)
    with TestClient(create_app(s)) as client:

        def login(handle: str) -> Api:
            r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
            assert r.status_code == 200, r.text
            return Api(client, r.json()["token"], r.json()["user"])

        bob, ann = login("bob"), login("ann")
        ann.follow(bob)
        item = bob.post_media("rocket.jpg").json()
        tray_before = ann.get("/tray").json()
        assert tray_before["items"][0]["first_unseen_id"] == item["id"]
        assert client.get("/readyz").status_code == 200

        # --- redis-server dies hard
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(5)
        first.stop()  # releases the data-dir lock; the process is already gone

        for call in (
            lambda: ann.get("/tray"),
            lambda: ann.post(f"/stories/{item['id']}/seen"),
            lambda: ann.get(f"/stories/{item['id']}"),
            lambda: bob.post_media("coffee.png"),
            lambda: client.post("/api/v1/auth/dev-login", json={"handle": "carol"}),
        ):
            r, took = _timed(call)
            body = assert_problem(r, 503, "unavailable")
            assert r.headers["retry-after"] == "3", body
            assert took < 10, f"a 503 should come quickly, took {took:.1f} s"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "3"
        assert ready.json()["checks"]["redis"].startswith("down")
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        # media files need no Redis to be refused safely: still 503, never a false 200/404
        media = client.get(item["media"]["url"])
        assert media.status_code == 503

        # --- a new redis-server on the same data dir: AOF brings the data back
        second = EmbeddedRedis(data_dir)
        own_redis.append(second)
        second.start()
        assert second.socket_path == first.socket_path

        _until(lambda: ann.get("/tray").status_code == 200)
        assert ann.get("/tray").json() == tray_before
        assert ann.post(f"/stories/{item['id']}/seen").status_code == 204
        entry = ann.get("/tray").json()["items"][0]
        assert entry["has_unseen"] is False and entry["first_unseen_id"] is None
        assert bob.get(f"/stories/{item['id']}").json()["view_count"] == 1
        assert client.get(item["media"]["url"]).status_code == 200
        assert bob.post_media("coffee.png").status_code == 201
        _until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json()["status"] == "ready"


async def test_sweeper_stops_even_when_an_await_swallowed_the_cancel():
    """Python 3.11's `asyncio.wait_for` (inside redis-py) can swallow a cancel that lands
    as its inner call finishes; the loop must still end, or shutdown waits on it."""
    swallowed = asyncio.Event()

    async def sweep_once() -> int:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # what the 3.11 wait_for race does
            swallowed.set()
        return 0

    settings = SimpleNamespace(settings=SimpleNamespace(sweep_interval_s=0.01))
    sweeper = Sweeper(settings, None)  # type: ignore[arg-type]
    sweeper.sweep_once = sweep_once  # type: ignore[method-assign]
    task = asyncio.create_task(sweeper.run())
    try:
        await asyncio.sleep(0.05)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert swallowed.is_set()
        assert done == {task} and task.cancelled()
    finally:
        for _ in range(100):  # on failure, keep cancelling until a cancel lands in a sleep
            if task.done():
                break
            task.cancel()
            await asyncio.sleep(0.01)
