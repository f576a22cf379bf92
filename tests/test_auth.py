"""Bearer tokens: what is refused (401), what is accepted, the pinned algorithm.

RS256 and ES256 run against their own app built like the `client` fixture, from
the test's `settings` with the algorithm and a PEM public key file swapped in;
keys are generated here with `cryptography`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.testclient import TestClient

from server.app import create_app
from server.core.settings import Settings
from tests.conftest import assert_problem


@contextmanager
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _get_me(client: TestClient, token: str | None, scheme: str = "Bearer") -> Any:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}".rstrip()}
    return client.get("/api/v1/me", headers=headers)


def _hs256(settings: Settings, **claims: Any) -> str:
    assert settings.jwt_secret
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def _now() -> int:
    return int(time.time())


# --- refused ----------------------------------------------------------------------------


def test_missing_and_garbage_tokens_are_401(client):
    for token, scheme in [
        (None, "Bearer"),
        ("", "Bearer"),
        ("garbage", "Bearer"),
        ("a.b.c", "Bearer"),
        ("eyJhbGciOiJIUzI1NiJ9.e30.", "Bearer"),
        ("dXNlcjpwYXNz", "Basic"),
    ]:
        assert_problem(_get_me(client, token, scheme), 401, "unauthorized")
    # every authenticated endpoint refuses the same way
    for method, path in [
        ("GET", "/api/v1/tray"),
        ("POST", "/api/v1/stories"),
        ("GET", "/api/v1/stories/u_x.1"),
        ("PUT", "/api/v1/me/following/u_x"),
        ("GET", "/api/v1/me/archive"),
    ]:
        assert_problem(client.request(method, path), 401, "unauthorized")


def test_a_valid_token_is_accepted_and_a_lookalike_is_not(client, settings):
    good = _hs256(settings, sub="u_good", exp=_now() + 60)
    assert _get_me(client, good).json()["id"] == "u_good"
    header, payload, sig = good.split(".")
    flipped = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    assert_problem(_get_me(client, f"{header}.{payload}.{flipped}"), 401, "unauthorized")
    other = _hs256(settings, sub="u_evil", exp=_now() + 60).split(".")[1]
    assert_problem(_get_me(client, f"{header}.{other}.{sig}"), 401, "unauthorized")


def test_expired_token_is_401(client, settings):
    r = _get_me(client, _hs256(settings, sub="u_old", exp=_now() - 120))
    body = assert_problem(r, 401, "unauthorized")
    assert "expired" in body["detail"]
    # a dev token minted long ago has expired too
    auth = client.app.state.services.auth
    old = auth.mint("u_old", _now() - settings.dev_token_ttl_s - 60)
    assert_problem(_get_me(client, old), 401, "unauthorized")


def test_alg_none_is_401(client):
    unsigned = jwt.encode({"sub": "u_none", "exp": _now() + 60}, None, algorithm="none")
    assert unsigned.endswith(".")
    assert_problem(_get_me(client, unsigned), 401, "unauthorized")
    # and with a forged signature part on it
    assert_problem(_get_me(client, unsigned + "c2ln"), 401, "unauthorized")


def test_wrong_hs256_key_is_401(client):
    forged = jwt.encode({"sub": "u_x", "exp": _now() + 60}, "not-the-secret-" + "y" * 32)
    assert_problem(_get_me(client, forged), 401, "unauthorized")


def test_missing_exp_or_sub_is_401(client, settings):
    assert_problem(_get_me(client, _hs256(settings, sub="u_forever")), 401, "unauthorized")
    assert_problem(_get_me(client, _hs256(settings, exp=_now() + 60)), 401, "unauthorized")
    # refusing did not create the user
    good = client.app.state.services.auth.mint("u_probe", _now())
    r = client.get("/api/v1/users/u_forever", headers={"Authorization": f"Bearer {good}"})
    assert_problem(r, 404, "not-found")


@pytest.mark.parametrize(
    "sub", ["bad/sub", "a b", "", "x" * 65, "u_é", "u.1", "../etc", "u\nx", 42, None, ["u"]]
)
def test_bad_sub_is_401(client, settings, sub):
    r = _get_me(client, _hs256(settings, sub=sub, exp=_now() + 60))
    assert_problem(r, 401, "unauthorized")


def test_valid_sub_edges_are_accepted(client, settings):
    for sub in ("x" * 64, "A-b_9", "1"):
        r = _get_me(client, _hs256(settings, sub=sub, exp=_now() + 60))
        assert r.status_code == 200 and r.json()["id"] == sub, r.text


# --- auto-provisioning -------------------------------------------------------------------


def test_new_sub_is_provisioned_with_its_handle_claim(client, settings):
    r = _get_me(client, _hs256(settings, sub="ext-42", exp=_now() + 60, handle="Zoe.Q"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": "ext-42",
        "handle": "zoe.q",
        "display_name": "zoe.q",
        "avatar_url": None,
    }
    # reachable by handle; the claim is used only on first sight
    token = _hs256(settings, sub="ext-42", exp=_now() + 60, handle="other")
    assert _get_me(client, token).json()["handle"] == "zoe.q"
    assert (
        client.get("/api/v1/users/zoe.q", headers={"Authorization": f"Bearer {token}"}).json()["id"]
        == "ext-42"
    )
    # preferred_username works too; a taken or invalid handle falls back to a generated one
    pref = _get_me(
        client,
        _hs256(settings, sub="ext-43", exp=_now() + 60, preferred_username="kim", name="Kim K"),
    )
    assert (pref.json()["handle"], pref.json()["display_name"]) == ("kim", "Kim K")
    taken = _get_me(client, _hs256(settings, sub="ext-44", exp=_now() + 60, handle="zoe.q"))
    bad = _get_me(client, _hs256(settings, sub="ext-45", exp=_now() + 60, handle="Not OK!"))
    for r in (taken, bad):
        assert r.status_code == 200 and r.json()["handle"].startswith("user_"), r.text


# --- dev login ---------------------------------------------------------------------------


def test_dev_login_disabled_is_404(settings):
    with app_client(dataclasses.replace(settings, dev_login=False)) as c:
        r = c.post("/api/v1/auth/dev-login", json={"handle": "alice"})
        assert_problem(r, 404, "not-found")
        # the bearer path still works
        token = c.app.state.services.auth.mint("u_a", _now())
        assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"handle": ""},
        {"handle": "Bad Handle"},
        {"handle": "a" * 31},
        {"handle": 123},
        {"handle": None},
        {},
        {"handle": "al/ice"},
        {"handle": "émile"},
    ],
)
def test_dev_login_bad_handle_is_422(client, body):
    body_ = assert_problem(client.post("/api/v1/auth/dev-login", json=body), 422, "invalid")
    assert body_["errors"][0]["field"] == "handle"


def test_dev_login_token_works_and_same_handle_is_same_user(client):
    first = client.post("/api/v1/auth/dev-login", json={"handle": " Alice "}).json()
    again = client.post("/api/v1/auth/dev-login", json={"handle": "alice"}).json()
    assert first["user"]["handle"] == "alice" and first["user"] == again["user"]
    me = _get_me(client, first["token"])
    assert me.json() == first["user"]


def test_dev_login_handle_that_is_another_users_id_is_409(client):
    signed_in = client.post("/api/v1/auth/dev-login", json={"handle": "bob"}).json()
    bob = signed_in["user"]
    r = client.post("/api/v1/auth/dev-login", json={"handle": bob["id"]})
    assert_problem(r, 409, "conflict")
    auth = {"Authorization": f"Bearer {signed_in['token']}"}
    assert client.get(f"/api/v1/users/{bob['id']}", headers=auth).json()["handle"] == "bob"


# --- RS256 / ES256 with a public key file -------------------------------------------------


def _pem_public(private_key: Any) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(params=["RS256", "ES256"])
def asymmetric(request, settings: Settings, tmp_path: Path) -> Iterator[tuple[Any, Any, bytes]]:
    """(client, private key, public PEM) for an app pinned to RS256 or ES256."""
    alg = request.param
    if alg == "RS256":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    pem = _pem_public(key)
    path = tmp_path / f"{alg}.pub.pem"
    path.write_bytes(pem)
    pinned = dataclasses.replace(
        settings, jwt_algorithm=alg, jwt_public_key_file=str(path), jwt_secret=None
    )
    with app_client(pinned) as c:
        c.alg = alg  # type: ignore[attr-defined]
        yield c, key, pem


def test_asymmetric_accepts_valid_and_provisions(asymmetric):
    client, key, _ = asymmetric
    token = jwt.encode(
        {"sub": "plat-7", "exp": _now() + 60, "handle": "nadia"}, key, algorithm=client.alg
    )
    r = _get_me(client, token)
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["handle"]) == ("plat-7", "nadia")
    assert _get_me(client, token).json()["id"] == "plat-7"


def test_asymmetric_refuses_confusion_and_bad_tokens(asymmetric, settings):
    client, key, pem = asymmetric
    claims = {"sub": "plat-8", "exp": _now() + 60}
    # algorithm confusion: HS256 "signed" with the public key as the HMAC secret
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = jwt.utils.base64url_encode(b'{"sub":"plat-8","exp":%d}' % (_now() + 60))
    import hashlib
    import hmac

    mac = hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    confused = b".".join([header, body, jwt.utils.base64url_encode(mac)]).decode()
    assert_problem(_get_me(client, confused), 401, "unauthorized")
    # an HS256 token made with the app's usual test secret
    assert_problem(_get_me(client, _hs256(settings, **claims)), 401, "unauthorized")
    # the other asymmetric algorithm, with a fresh key
    if client.alg == "RS256":
        other = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    else:
        other = jwt.encode(claims, rsa.generate_private_key(65537, 2048), algorithm="RS256")
    assert_problem(_get_me(client, other), 401, "unauthorized")
    # right algorithm, wrong key
    if client.alg == "RS256":
        stranger: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        stranger = ec.generate_private_key(ec.SECP256R1())
    assert_problem(
        _get_me(client, jwt.encode(claims, stranger, algorithm=client.alg)), 401, "unauthorized"
    )
    # right key, but expired / no exp / none
    expired = jwt.encode({**claims, "exp": _now() - 60}, key, algorithm=client.alg)
    no_exp = jwt.encode({"sub": "plat-8"}, key, algorithm=client.alg)
    none = jwt.encode(claims, None, algorithm="none")
    for token in (expired, no_exp, none):
        assert_problem(_get_me(client, token), 401, "unauthorized")
    # nobody was provisioned by the refused tokens
    ok = jwt.encode({"sub": "plat-9", "exp": _now() + 60}, key, algorithm=client.alg)
    r = client.get("/api/v1/users/plat-8", headers={"Authorization": f"Bearer {ok}"})
    assert_problem(r, 404, "not-found")


def test_asymmetric_dev_login_is_not_a_500(asymmetric):
    """Dev login mints HS256 tokens; with an asymmetric key it cannot, and says so."""
    client, key, _ = asymmetric
    r = client.post("/api/v1/auth/dev-login", json={"handle": "alice"})
    assert r.status_code != 500, r.text
    assert_problem(r, 404, "not-found")
    # and no user was created on the way
    ok = jwt.encode({"sub": "plat-1", "exp": _now() + 60}, key, algorithm=client.alg)
    r = client.get("/api/v1/users/alice", headers={"Authorization": f"Bearer {ok}"})
    assert_problem(r, 404, "not-found")
