"""The pilot rollout gate: pure rules, the admin endpoint, the token's country, the CLI.

Posting is gated; reading never is. The gate lives in Redis and is read on each
post, so a change (admin API or `stories rollout set` from another process)
applies to a running app without a restart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.core.errors import InvalidField
from server.core.settings import Settings
from server.store.rollout import CACHE_S as ROLLOUT_CACHE_S
from server.store.rollout import Gate, bucket, may_post
from tests.conftest import Api, assert_problem

ADMIN = "admin-" + "z" * 24
REPO = Path(__file__).resolve().parent.parent

# --- pure rules --------------------------------------------------------------------------


def test_bucket_is_stable_in_range_and_spread():
    # pinned: changing the hash would silently reshuffle a running pilot's cohort
    assert [bucket(u) for u in ("u_alice", "u_bob", "alice", "")] == [
        int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") % 100
        for u in ("u_alice", "u_bob", "alice", "")
    ]
    assert bucket("u_alice") == bucket("u_alice")
    counts = Counter(bucket(f"u_{n:06x}") for n in range(20_000))
    assert set(counts) == set(range(100))
    assert all(140 <= c <= 260 for c in counts.values()), counts.most_common(3)


def test_closed_gate_refuses_everyone_by_default():
    gate = Gate(open=False)
    assert not may_post(gate, "u_1", "one", None)
    assert not may_post(gate, "u_1", "one", "NZ")
    assert may_post(Gate(), "u_1", "one", None)  # the default gate is open
    assert may_post(Gate(open=True, percent=0, allow=[]), "u_1", "one", None)


def test_percent_admits_exactly_the_low_buckets():
    users = [f"u_{n}" for n in range(2000)]
    for percent in (0, 1, 10, 50, 99, 100):
        gate = Gate(open=False, percent=percent)
        admitted = {u for u in users if may_post(gate, u, "h", None)}
        assert admitted == {u for u in users if bucket(u) < percent}
    assert all(may_post(Gate(open=False, percent=100), u, "h", None) for u in users)
    # widening the pilot never drops anyone already in
    small = {u for u in users if may_post(Gate(open=False, percent=10), u, "h", None)}
    large = {u for u in users if may_post(Gate(open=False, percent=30), u, "h", None)}
    assert small < large
    assert 0.2 < len(large) / len(users) < 0.4


def test_countries_compare_upper_case_and_need_a_claim():
    gate = Gate(open=False, countries=["NZ", "PT"])
    assert may_post(gate, "u_1", "h", "NZ")
    assert may_post(gate, "u_1", "h", "pt")
    assert not may_post(gate, "u_1", "h", "US")
    assert not may_post(gate, "u_1", "h", None)
    assert not may_post(gate, "u_1", "h", "")
    assert not may_post(Gate(open=False), "u_1", "h", "NZ")


def test_allowlist_by_id_or_handle():
    gate = Gate(open=False, allow=["u_alice", "bob"])
    assert may_post(gate, "u_alice", "someone", None)
    assert may_post(gate, "u_x", "bob", None)
    assert not may_post(gate, "u_bob", "carol", None)
    assert not may_post(gate, "u_ali", "alic", None)


def test_gate_parse():
    assert Gate.parse({}) == Gate(open=False)
    assert Gate.parse({"open": True}) == Gate(open=True)
    parsed = Gate.parse({"allow": ["a", "u_b"], "percent": 5, "countries": ["nz", "Pt"]})
    assert parsed == Gate(open=False, allow=["a", "u_b"], percent=5, countries=["NZ", "PT"])
    assert Gate.parse(parsed.to_json()) == parsed
    for bad, field in [
        ([], "body"),
        ({"percent": 101}, "percent"),
        ({"percent": -1}, "percent"),
        ({"percent": True}, "percent"),
        ({"percent": 5.5}, "percent"),
        ({"countries": ["NZL"]}, "countries"),
        ({"countries": ["N1"]}, "countries"),
        ({"countries": "NZ"}, "countries"),
        ({"allow": ["ok", ""]}, "allow"),
        ({"allow": [3]}, "allow"),
        ({"open": "yes"}, "open"),
        ({"everyone": True}, "everyone"),
    ]:
        with pytest.raises(InvalidField) as err:
            Gate.parse(bad)
        assert err.value.errors == [{"field": field, "detail": err.value.errors[0]["detail"]}]


# --- through the app ---------------------------------------------------------------------


@pytest.fixture
def admin_app(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(dataclasses.replace(settings, admin_token=ADMIN))) as c:
        yield c


def _login(client: TestClient, handle: str) -> Api:
    r = client.post("/api/v1/auth/dev-login", json={"handle": handle})
    assert r.status_code == 200, r.text
    return Api(client, r.json()["token"], r.json()["user"])


def _as(client: TestClient, user: dict[str, Any], **claims: Any) -> Api:
    """`user` with a token carrying extra claims (minted like the host platform would)."""
    token = client.app.state.services.auth.mint(user["id"], int(time.time()), **claims)
    return Api(client, token, user)


def _put_gate(client: TestClient, body: dict[str, Any], token: str = ADMIN) -> Any:
    return client.put(
        "/api/v1/admin/rollout", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def test_admin_endpoint_guards(admin_app):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN}"}):
        for method in ("GET", "PUT"):
            r = admin_app.request(method, "/api/v1/admin/rollout", headers=headers, json={})
            assert_problem(r, 401, "unauthorized")
    # a user's token is not an admin token
    alice = _login(admin_app, "alice")
    assert_problem(_put_gate(admin_app, {"open": False}, alice.token), 401, "unauthorized")
    ok = admin_app.get("/api/v1/admin/rollout", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.json() == {"open": True, "allow": [], "percent": 0, "countries": []}
    body = assert_problem(_put_gate(admin_app, {"percent": 200}), 422, "invalid")
    assert body["errors"][0]["field"] == "percent"
    r = admin_app.put(
        "/api/v1/admin/rollout", content=b"{oops", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert_problem(r, 400, "malformed")
    # refused writes left the gate open
    assert alice.post_media("rocket.jpg").status_code == 201


def test_admin_api_off_is_404(client):
    for token in ("", "anything", "None"):
        r = client.put(
            "/api/v1/admin/rollout",
            json={"open": False},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert_problem(r, 404, "not-found")
        assert_problem(client.get("/api/v1/admin/rollout"), 404, "not-found")


def test_gate_applies_at_once_and_reading_still_works(admin_app):
    alice, bob = _login(admin_app, "alice"), _login(admin_app, "bob")
    bob.follow(alice)
    first = alice.post_media("rocket.jpg").json()
    r = _put_gate(admin_app, {"allow": ["alice"]})
    assert r.status_code == 200 and r.json()["open"] is False

    body = assert_problem(bob.post_media("rocket.jpg"), 403, "stories-not-enabled")
    assert body["type"] == "/problems/stories-not-enabled"
    assert_problem(bob.post(f"/stories/{first['id']}/share", json={}), 403, "stories-not-enabled")
    assert bob.get(f"/users/{bob.id}/stories").json()["items"] == []
    # reading, seeing, reacting and replying are never gated
    assert bob.get("/tray").json()["items"][0]["first_unseen_id"] == first["id"]
    assert bob.get(f"/stories/{first['id']}").status_code == 200
    assert bob.post(f"/stories/{first['id']}/seen").status_code == 204
    assert bob.post(f"/stories/{first['id']}/reactions", json={"emoji": "👏"}).status_code == 204
    assert bob.post(f"/stories/{first['id']}/replies", json={"text": "yay"}).status_code == 201
    assert admin_app.get(first["media"]["url"]).status_code == 200
    # alice (allowed by handle) still posts
    assert alice.post_media("coffee.png").status_code == 201

    # widen by id: bob gets in without a restart
    assert _put_gate(admin_app, {"allow": ["alice", bob.id]}).status_code == 200
    assert bob.post_media("rocket.jpg").status_code == 201
    # close to everyone again, then open
    assert _put_gate(admin_app, {}).status_code == 200
    assert_problem(alice.post_media("rocket.jpg"), 403, "stories-not-enabled")
    assert _put_gate(admin_app, {"open": True}).status_code == 200
    assert alice.post_media("rocket.jpg").status_code == 201


def test_percent_through_the_app(admin_app):
    users = [_login(admin_app, f"user{n}") for n in range(8)]
    by_bucket = sorted(users, key=lambda u: bucket(u.id))
    low, high = by_bucket[0], by_bucket[-1]
    assert bucket(low.id) < bucket(high.id)
    assert _put_gate(admin_app, {"percent": bucket(low.id) + 1}).status_code == 200
    assert low.post_media("rocket.jpg").status_code == 201
    assert_problem(high.post_media("rocket.jpg"), 403, "stories-not-enabled")


def test_country_claim_from_the_token(admin_app):
    alice = _login(admin_app, "alice")
    assert _put_gate(admin_app, {"countries": ["nz"]}).json()["countries"] == ["NZ"]
    assert_problem(alice.post_media("rocket.jpg"), 403, "stories-not-enabled")
    assert_problem(
        _as(admin_app, alice.user, country="PT").post_media("rocket.jpg"),
        403,
        "stories-not-enabled",
    )
    assert_problem(
        _as(admin_app, alice.user, country=["NZ"]).post_media("rocket.jpg"),
        403,
        "stories-not-enabled",
    )
    kiwi = _as(admin_app, alice.user, country="NZ")
    assert kiwi.post_media("rocket.jpg").status_code == 201
    assert _as(admin_app, alice.user, country="nz").post_media("coffee.png").status_code == 201


def test_country_claim_name_is_configurable(settings):
    custom = dataclasses.replace(settings, admin_token=ADMIN, jwt_country_claim="geo")
    with TestClient(create_app(custom)) as c:
        alice = _login(c, "alice")
        assert _put_gate(c, {"countries": ["NZ"]}).status_code == 200
        assert_problem(
            _as(c, alice.user, country="NZ").post_media("rocket.jpg"), 403, "stories-not-enabled"
        )
        assert _as(c, alice.user, geo="NZ").post_media("rocket.jpg").status_code == 201


# --- the CLI, as a real process, against the running app's Redis ---------------------------


def _cli(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORIES_")}
    env["STORIES_REDIS_PREFIX"] = settings.redis_prefix
    env["PYTHONPATH"] = str(REPO)
    assert settings.redis_url
    cmd = [
        sys.executable,
        "-m",
        "server",
        "rollout",
        *args,
        "--redis-url",
        settings.redis_url,
        "--data-dir",
        str(tmp_path / "cli-data"),
    ]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    time.sleep(ROLLOUT_CACHE_S)  # a running app reads the gate again within a second
    return done


def test_cli_rollout_changes_a_running_app(client, login, settings, tmp_path):
    alice, bob = login("alice"), login("bob")
    assert bob.post_media("rocket.jpg").status_code == 201  # open by default

    out = json.loads(_cli(settings, tmp_path, "set", "--allow", "alice").stdout)
    assert out == {"open": False, "allow": ["alice"], "percent": 0, "countries": []}
    assert alice.post_media("rocket.jpg").status_code == 201
    assert_problem(bob.post_media("rocket.jpg"), 403, "stories-not-enabled")

    _cli(settings, tmp_path, "set", "--allow", f"alice, {bob.id}", "--countries", "nz,pt")
    shown = json.loads(_cli(settings, tmp_path, "show").stdout)
    assert shown == {
        "open": False,
        "allow": ["alice", bob.id],
        "percent": 0,
        "countries": ["NZ", "PT"],
    }
    assert (
        client.get("/api/v1/admin/rollout", headers={"Authorization": "Bearer x"}).status_code
        == 404
    )  # the admin API stays off; the CLI needs no admin token
    assert bob.post_media("rocket.jpg").status_code == 201
    assert_problem(login("carol").post_media("rocket.jpg"), 403, "stories-not-enabled")

    _cli(settings, tmp_path, "set", "--open")
    assert login("carol").post_media("rocket.jpg").status_code == 201


def test_cli_rollout_bad_values_exit_2(settings, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORIES_")}
    env["STORIES_REDIS_PREFIX"] = settings.redis_prefix
    env["PYTHONPATH"] = str(REPO)
    assert settings.redis_url
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server",
            "rollout",
            "set",
            "--percent",
            "150",
            "--redis-url",
            settings.redis_url,
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "percent" in done.stderr and "Traceback" not in done.stderr
