"""`stories serve` as a real process: embedded Redis, HTTP on a free port, expiry, exits.

Every process started here is stopped by its PID in a `finally`. Servers bind
127.0.0.1 on a port found by binding port 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
MEDIA = REPO / "tests" / "media"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORIES_")}
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def stories(
    *args: str, cwd: Path, timeout_s: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m server ARGS` to completion (`env`: more variables)."""
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        env={**cli_env(), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@contextmanager
def serving(
    data_dir: Path, port: int, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A `serve` process (output to a log file), killed by PID with its Redis at the end."""
    log = data_dir.parent / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            env=cli_env(),
            cwd=data_dir.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    children: list[psutil.Process] = []
    try:
        yield proc, log
    finally:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        _stop(proc)
        for child in children:
            try:
                child.kill()
                child.wait(5)
            except psutil.NoSuchProcess:
                pass


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def redis_children(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "redis" in p.name()]


class User:
    def __init__(self, http: httpx.Client, handle: str) -> None:
        r = http.post("/api/v1/auth/dev-login", json={"handle": handle})
        assert r.status_code == 200, r.text
        self.http, self.id = http, r.json()["user"]["id"]
        self.headers = {"Authorization": f"Bearer {r.json()['token']}"}

    def __getattr__(self, method: str) -> Any:
        return lambda path, **kw: self.http.request(
            method.upper(), "/api/v1" + path, headers=self.headers, **kw
        )

    def post_media(self, name: str) -> dict[str, Any]:
        with (MEDIA / name).open("rb") as fh:
            r = self.post("/stories", files={"media": (name, fh)})
        assert r.status_code == 201, r.text
        return dict(r.json())


def test_serve_end_to_end_second_server_and_sigterm(tmp_path):
    data = tmp_path / "d"
    port = free_port()
    with serving(data, port, "--dev-login", "--lifetime-seconds", "3") as (proc, log):
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, timeout=10)
        try:
            wait_until(lambda: http.get("/readyz").status_code == 200, 20, "/readyz 200")
            banner = log.read_text()
            assert f"http://127.0.0.1:{port}/" in banner
            assert "Redis" in banner and "embedded" in banner and "unix://" in banner
            [redis_proc] = redis_children(proc.pid)
            assert redis_proc.is_running()

            bob, ann = User(http, "bob"), User(http, "ann")
            assert ann.put(f"/me/following/{bob.id}").status_code == 204
            video = bob.post_media("city_vertical_h264.mp4")
            photo = bob.post_media("chelsea_exif_orientation6.jpg")
            assert video["media"]["kind"] == "video" and photo["media"]["kind"] == "image"
            assert (photo["media"]["width"], photo["media"]["height"]) == (451, 300)
            [entry] = ann.get("/tray").json()["items"]
            assert entry["owner"]["id"] == bob.id and entry["has_unseen"]
            assert entry["item_count"] == 2 and entry["first_unseen_id"] == video["id"]
            assert ann.post(f"/stories/{photo['id']}/seen").status_code == 204
            [entry] = ann.get("/tray").json()["items"]
            assert entry["has_unseen"] is False and entry["first_unseen_id"] is None
            viewers = bob.get(f"/stories/{photo['id']}/viewers").json()
            assert viewers["count"] == 1 and viewers["items"][0]["user"]["id"] == ann.id
            assert bob.get(f"/stories/{video['id']}/viewers").json()["count"] == 0  # not shown
            got = http.get(video["media"]["url"], headers={"Range": "bytes=0-9"})
            assert got.status_code == 206 and len(got.content) == 10

            # a second server on the same data dir refuses, clearly, while the first runs
            second = stories(
                "serve", "--port", str(free_port()), "--data-dir", str(data), cwd=tmp_path
            )
            assert second.returncode == 3, second.stdout + second.stderr
            assert "in use" in second.stderr and "Traceback" not in second.stderr
            assert http.get("/readyz").status_code == 200  # the first is unharmed

            # `stories token` signs with the deployment's secret, kept in its Redis
            minted = stories("token", bob.id, "--data-dir", str(data), cwd=tmp_path)
            assert minted.returncode == 0, minted.stderr
            me = http.get(
                "/api/v1/me", headers={"Authorization": f"Bearer {minted.stdout.strip()}"}
            )
            assert me.status_code == 200 and me.json()["id"] == bob.id

            # lifetime 3 s: gone from the tray, reads and media soon after
            wait_until(lambda: ann.get("/tray").json()["items"] == [], 8, "expiry")
            assert ann.get(f"/stories/{video['id']}").status_code == 404
            assert ann.get(f"/users/{bob.id}/stories").json()["items"] == []
            assert http.get(video["media"]["url"]).status_code == 404
            wait_until(lambda: len(bob.get("/me/archive").json()["items"]) == 2, 5, "archive")
        finally:
            http.close()

        # SIGTERM: the server exits and takes its embedded redis-server with it
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        assert code == -signal.SIGTERM, log.read_text()[-2000:]  # ends by the signal: a clean stop
        redis_proc.wait(5)
        assert not redis_proc.is_running()
        assert "Traceback" not in log.read_text()


def test_unreachable_redis_exits_3_with_one_line(tmp_path):
    done = stories(
        "serve",
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "d"),
        "--redis-url",
        "redis://127.0.0.1:1",
        cwd=tmp_path,
        timeout_s=40,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "127.0.0.1:1" in lines[0]
    assert not (tmp_path / "d" / "redis").exists()  # no embedded Redis was started


@pytest.mark.parametrize(
    "bad", [["--workers", "x"], ["--lifetime-seconds", "0"], ["--port", "\u0668\u0660\u0660\u0660"]]
)
def test_bad_configuration_exits_non_zero_without_traceback(tmp_path, bad):
    done = stories(
        "serve",
        "--data-dir",
        str(tmp_path / "d"),
        "--redis-url",
        "redis://127.0.0.1:1",
        *bad,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip()


def test_embedded_redis_that_dies_is_restarted_with_its_data(tmp_path):
    """The server restarts its own redis-server (from the AOF) and serves again by itself."""
    port = free_port()
    data = tmp_path / "data"
    with serving(data, port, "--dev-login") as (proc, log):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness")
            alice = User(http, "alice")
            item = alice.post_media("rocket.jpg")
            time.sleep(1.2)  # appendfsync everysec
            (first,) = redis_children(proc.pid)
            first.kill()
            first.wait(5)
            wait_until(lambda: http.get("/readyz").status_code == 200, 10, "redis restarted")
            (second,) = redis_children(proc.pid)
            assert second.pid != first.pid
            assert alice.get(f"/stories/{item['id']}").status_code == 200
        assert "restarting" in log.read_text()


def test_rollout_refuses_a_percent_of_non_ascii_digits(tmp_path):
    done = stories("rollout", "set", "--percent", "\u0663", "--data-dir", str(tmp_path / "d"),
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "ASCII" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "d" / "redis").exists()  # refused before touching Redis


def test_token_refuses_an_id_the_server_would_reject(tmp_path):
    bad = stories("token", "bad id!", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert bad.returncode == 2 and "user id" in bad.stderr
    good = stories("token", "u_ok", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert good.returncode == 0 and good.stdout.count(".") == 2


def test_access_log_lines_keep_their_shape_with_tokens_redacted(tmp_path):
    """uvicorn's access formatter unpacks `record.args`: redaction must keep them (issue 9.4)."""
    import websockets.sync.client
    from websockets.exceptions import ConnectionClosed

    port = free_port()
    with serving(tmp_path / "d", port, "--dev-login") as (_, log):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, 20, "readiness")
            assert http.get("/api/v1/tray?token=SECRET-HTTP.x.y&page=2").status_code == 401
            assert http.get("/healthz?token=SECRET-PLAIN").status_code == 200
            url = f"ws://127.0.0.1:{port}/ws?token=SECRET-WS.a.b"
            with websockets.sync.client.connect(url) as ws, pytest.raises(ConnectionClosed):
                ws.recv(5)  # 4001: not a token we issued
            marker = "/healthz?end=1"
            assert http.get(marker).status_code == 200
            wait_until(lambda: marker in log.read_text(), 5, "the last access line")
    text = log.read_text()
    assert "SECRET" not in text, text
    assert "Logging error" not in text and "Traceback" not in text, text
    assert '"GET /api/v1/tray?token=[redacted]&page=2 HTTP/1.1" 401' in text, text
    assert '"GET /healthz?token=[redacted] HTTP/1.1" 200' in text, text
    assert '"WebSocket /ws?token=[redacted]"' in text, text
