"""Every write endpoint has a per-minute limit: 429 problem+json with Retry-After (issue 9.9).

The write routes are read from the app itself, so a new one without a limit fails
here. The clock is a ManualClock 15 s into a clock minute (near real time: tokens
are checked against it), so every refusal says `Retry-After: 45`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from server.app import create_app
from server.core.clock import ManualClock
from server.core.settings import Settings
from tests.conftest import Api, assert_problem

ADMIN = "admin-token-" + "y" * 20
ALLOWANCES = {
    "posts_per_minute": 3,
    "messages_per_minute": 3,
    "seen_per_minute": 3,
    "graph_changes_per_minute": 3,
    "edits_per_minute": 3,
    "dev_logins_per_minute": 5,  # two users sign in before the flood
    "admin_writes_per_minute": 3,
}


def _minute_clock() -> ManualClock:
    real_ms = time.time_ns() // 1_000_000 - 60_000
    return ManualClock(real_ms - real_ms % 60_000 + 15_000)


def _login(client: TestClient, handle: str) -> Api:
    r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
    assert r.status_code == 200, r.text
    return Api(client, r.json()["token"], r.json()["user"])


@pytest.fixture
def tight(settings: Settings) -> Iterator[tuple[TestClient, ManualClock]]:
    s = dataclasses.replace(settings, admin_token=ADMIN, **ALLOWANCES)
    clock = _minute_clock()
    with TestClient(create_app(s, clock)) as client:
        yield client, clock


def write_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path template) of every route under /api/v1 that is not a read."""
    app: Any = client.app
    [api] = [r for r in app.routes if isinstance(r, Mount) and r.path == "/api/v1"]
    return sorted(
        (method, r.path)
        for r in api.routes
        if isinstance(r, Route)
        for method in r.methods or ()
        if method not in ("GET", "HEAD")
    )


def test_every_write_endpoint_answers_429_with_retry_after_once_its_allowance_is_spent(tight):
    client, _ = tight
    bob, ann = _login(client, "bob"), _login(client, "ann")
    routes = write_routes(client)
    assert len(routes) >= 19, routes  # dev login, profile, graph, stories, captures, admin
    most = max(ALLOWANCES.values())
    for method, template in routes:
        path = template.replace("{id}", "u_nobody.1").replace("{uid}", "u_nobody")
        headers = {"Authorization": f"Bearer {ADMIN}"} if path.startswith("/admin") else {}
        for _ in range(most + 1):
            r = getattr(ann, method.lower())(path, headers=headers, json={})
            if r.status_code == 429:
                break
        assert_problem(r, 429, "rate-limited")  # within its allowance + 1 calls
        assert r.headers["retry-after"] == "45", (method, template)
    assert bob.get("/me").status_code == 200, "reads are not limited"


def test_a_seen_flood_over_http_is_cut_at_the_allowance_and_writes_nothing_more(settings):
    """The trial's 300 `POST /seen` in a burst: the default 120 a minute pass, no more."""
    clock = _minute_clock()
    with TestClient(create_app(settings, clock)) as client:
        bob, ann = _login(client, "bob"), _login(client, "ann")
        ann.follow(bob)
        item = bob.post_media("rocket.jpg").json()["id"]
        codes = [ann.post(f"/stories/{item}/seen").status_code for _ in range(300)]
        assert codes == [204] * 120 + [429] * 180
        refused = ann.post(f"/stories/{item}/seen")
        assert_problem(refused, 429, "rate-limited")
        assert refused.headers["retry-after"] == "45"
        assert bob.get(f"/stories/{item}/viewers").json()["count"] == 1
        assert bob.post(f"/stories/{item}/seen").status_code == 204, "another user's own budget"
        clock.advance(45_000)  # the next clock minute
        assert ann.post(f"/stories/{item}/seen").status_code == 204


def test_a_refused_graph_change_changes_nothing(tight):
    client, clock = tight
    bob, ann, cid = _login(client, "bob"), _login(client, "ann"), _login(client, "cid")
    for _ in range(ALLOWANCES["graph_changes_per_minute"]):
        assert ann.put(f"/me/following/{bob.id}").status_code == 204
    assert_problem(ann.put(f"/me/following/{cid.id}"), 429, "rate-limited")
    assert [u["id"] for u in ann.get("/me/following").json()["items"]] == [bob.id]
    clock.advance(45_000)
    assert ann.put(f"/me/following/{cid.id}").status_code == 204


def test_dev_login_is_limited_per_client_address(tight):
    client, _ = tight
    for n in range(ALLOWANCES["dev_logins_per_minute"]):
        assert client.post("/api/v1/auth/dev-login", json={"handle": f"u{n}"}).status_code == 200
    r = client.post("/api/v1/auth/dev-login", json={"handle": "one_more"})
    assert_problem(r, 429, "rate-limited")
    assert r.headers["retry-after"] == "45"
