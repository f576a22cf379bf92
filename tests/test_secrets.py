"""Deployment secrets live in Redis: two hosts on one Redis form one deployment.

Each "host" here is an app with its own data dir (as two machines have), on the
same Redis and key prefix, with neither `jwt_secret` nor `media_secret` set.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from starlette.testclient import TestClient

from server.app import create_app
from server.core.settings import Settings


def _host(settings: Settings, data: Path) -> Settings:
    return dataclasses.replace(settings, data_dir=str(data), jwt_secret=None, media_secret=None)


def test_a_token_and_a_media_url_from_one_host_work_on_another(settings, tmp_path):
    a, b = _host(settings, tmp_path / "host-a"), _host(settings, tmp_path / "host-b")
    with TestClient(create_app(a)) as host_a, TestClient(create_app(b)) as host_b:
        r = host_a.post("/api/v1/auth/dev-login", json={"handle": "ann"})
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        assert host_b.get("/api/v1/me", headers=auth).json()["handle"] == "ann"
    for data in (tmp_path / "host-a", tmp_path / "host-b"):
        assert not (data / "secrets").exists(), "secrets are kept in Redis, not the data dir"


def test_secrets_are_generated_once_and_agree_across_processes(settings, tmp_path):
    a, b = _host(settings, tmp_path / "a"), _host(settings, tmp_path / "b")
    with TestClient(create_app(a)) as host_a, TestClient(create_app(b)) as host_b:
        sa, sb = host_a.app.state.services, host_b.app.state.services
        url = sa.store.signer.url("u_x.1", "file", "live", 2_000_000_000_000)
        assert sb.store.signer.url("u_x.1", "file", "live", 2_000_000_000_000) == url
        assert sa.store.signer._secret == sb.store.signer._secret
        assert len(sa.store.signer._secret) >= 32
        token = sa.auth.mint("u_x", int(time.time()))
        assert sb.auth.verify(token).user_id == "u_x"


def test_a_data_dir_secret_from_before_is_adopted(settings, tmp_path):
    data = tmp_path / "old"
    (data / "secrets").mkdir(parents=True)
    (data / "secrets" / "jwt").write_bytes(b"an-old-jwt-secret-" + b"z" * 32)
    (data / "secrets" / "media").write_bytes(b"an-old-media-secret")
    with TestClient(create_app(_host(settings, data))) as host:
        svc = host.app.state.services
        assert svc.store.signer._secret == b"an-old-media-secret"
        assert svc.auth._secret == b"an-old-jwt-secret-" + b"z" * 32
    with TestClient(create_app(_host(settings, tmp_path / "new"))) as other:  # same Redis
        assert other.app.state.services.store.signer._secret == b"an-old-media-secret"
