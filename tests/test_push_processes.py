"""Push across real server processes (`python -m server serve`).

(a) Two processes on two ports share one Redis: a post made through B's HTTP API
    reaches a follower's socket on A (story.new, tray.update), and a seen sent
    on A reaches the owner's socket on B (story.viewed).
(b) `--workers 2` on one port: follower sockets spread over both workers all
    get story.new for one post.
(c) SIGTERM to a single-process server with its embedded Redis: every socket is
    closed with 1012 and a `{"retry_after_ms"}` reason inside the configured
    window, the process exits within ws_drain_timeout_s + 5 s, and its
    redis-server is gone too.

Every process binds 127.0.0.1 on a free port and is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
import websockets

from tests.live import Client, free_port

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "proc-secret-" + "y" * 32


@dataclass
class Endpoint:
    """What `tests.live.Client` needs of a server: its base URLs."""

    url: str
    ws_url: str


class ServerProcess:
    """`python -m server serve` on 127.0.0.1:<free port>, output in a log file."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.endpoint = Endpoint(f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}/ws")
        self.log = tmp / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STORIES_")}
        full_env.update(env, PYTHONPATH=str(ROOT), STORIES_LOG_LEVEL="warning")
        cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(tmp / f"{name}-data"),
               "--dev-login", *args]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.descendants: set[int] = set()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.endpoint.url + "/readyz", timeout=2).status_code == 200:
                    self.remember_children()
                    return
            time.sleep(0.1)
        raise AssertionError(f"server not ready within {timeout_s} s:\n{self.output()}")

    def remember_children(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.descendants |= {c.pid for c in psutil.Process(self.proc.pid).children(True)}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; any descendant still alive is killed by its PID."""
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.descendants:
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(pid)
                if child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()


@contextlib.contextmanager
def servers(
    tmp: Path, *specs: tuple[str, dict[str, str], tuple[str, ...]]
) -> Iterator[list[ServerProcess]]:
    procs: list[ServerProcess] = []
    try:
        for name, env, args in specs:
            procs.append(ServerProcess(tmp, name, env, *args))
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()


def shared_env() -> dict[str, str]:
    return {
        "STORIES_REDIS_PREFIX": f"tproc{uuid.uuid4().hex[:8]}:",
        "STORIES_JWT_SECRET": JWT_SECRET,
        "STORIES_MEDIA_SECRET": "proc-media-secret",
        "STORIES_POSTS_PER_MINUTE": "1000",
    }


def login(endpoint: Endpoint, handle: str) -> Client:
    return Client(endpoint, handle)  # type: ignore[arg-type]


async def test_two_processes_share_events_through_redis(redis_url: str, tmp_path: Path) -> None:
    env = shared_env()
    spec = (env, ("--redis-url", redis_url))
    with servers(tmp_path, ("a", *spec), ("b", *spec)) as (a, b):
        alice = login(a.endpoint, "alice")  # the follower, on A
        bob = login(b.endpoint, "bob")  # the owner, on B
        assert (await alice.http.put(f"/me/following/{bob.id}")).status_code == 204
        a_sock, b_sock = await alice.socket(), await bob.socket()
        item = await bob.post_photo()
        new = await a_sock.next("story.new")
        assert new["item"]["id"] == item["id"] and new["item"]["owner"]["id"] == bob.id
        update = await a_sock.next("tray.update")
        assert update["entry"]["owner"]["id"] == bob.id and update["entry"]["has_unseen"] is True
        assert update["entry"]["first_unseen_id"] == item["id"]
        await a_sock.send(op="seen", item=item["id"])
        viewed = await b_sock.next("story.viewed")
        assert viewed["item_id"] == item["id"] and viewed["viewer"]["id"] == alice.id
        assert viewed["view_count"] == 1
        seen = await a_sock.next("tray.update")
        assert seen["entry"]["has_unseen"] is False
        for s in (a_sock, b_sock):
            await s.close()
        for c in (alice, bob):
            await c.close()


def _worker_of_sockets(server: ServerProcess) -> dict[int, int]:
    """Worker PID → established connections it holds on the server's port."""
    counts: dict[int, int] = {}
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            held = [
                c
                for c in child.net_connections(kind="tcp")
                if c.laddr and c.laddr.port == server.port and c.status == psutil.CONN_ESTABLISHED
            ]
            if held:
                counts[child.pid] = len(held)
    return counts


async def test_two_workers_both_push(redis_url: str, tmp_path: Path) -> None:
    env = shared_env()
    with servers(tmp_path, ("w", env, ("--redis-url", redis_url, "--workers", "2"))) as (srv,):
        bob = login(srv.endpoint, "bob")
        fans = [login(srv.endpoint, f"fan{n}") for n in range(8)]
        for fan in fans:
            assert (await fan.http.put(f"/me/following/{bob.id}")).status_code == 204
        socks = [await fan.socket() for fan in fans]
        spread = _worker_of_sockets(srv)
        for n in range(24):  # more sockets until both workers hold some
            if len(spread) >= 2:
                break
            fans.append(login(srv.endpoint, f"extra{n}"))
            await fans[-1].http.put(f"/me/following/{bob.id}")
            socks.append(await fans[-1].socket())
            spread = _worker_of_sockets(srv)
        assert len(spread) == 2, f"sockets did not spread over the workers: {spread}"
        item = await bob.post_photo()
        news = await asyncio.gather(*(s.next("story.new") for s in socks))
        assert all(n["item"]["id"] == item["id"] for n in news)
        for s in socks:
            await s.close()
        for c in (bob, *fans):
            await c.close()


@dataclass
class Unsigned:
    """A raw socket shaped like `tests.live.Socket` for `_close_of`."""

    ws: Any


async def _close_of(sock: Any, wait_s: float) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(sock.ws.recv(), wait_s)
    assert info.value.rcvd is not None, "no close frame from the server"
    return info.value.rcvd.code, info.value.rcvd.reason


async def test_sigterm_drains_sockets_and_stops_embedded_redis(tmp_path: Path) -> None:
    drain_s, base, spread = 3, 500, 1000
    env = {
        **shared_env(),
        "STORIES_WS_DRAIN_TIMEOUT_S": str(drain_s),
        "STORIES_WS_RECONNECT_BASE_MS": str(base),
        "STORIES_WS_RECONNECT_SPREAD_MS": str(spread),
    }
    with servers(tmp_path, ("solo", env, ())) as (srv,):
        redis_pids = [
            c.pid for c in psutil.Process(srv.proc.pid).children(True) if "redis" in c.name()
        ]
        assert len(redis_pids) == 1, "expected the embedded redis-server as a child"
        users = [login(srv.endpoint, f"u{n}") for n in range(5)]
        socks = [await u.socket() for u in users]
        # one more socket, accepted but not signed in yet (no token, no auth frame)
        unsigned = await websockets.connect(srv.endpoint.ws_url)
        socks.append(Unsigned(unsigned))
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        closes = await asyncio.gather(*(_close_of(s, drain_s + 5) for s in socks))
        for code, reason in closes:
            assert code == 1012, (code, reason)
            wait = orjson.loads(reason)["retry_after_ms"]
            assert isinstance(wait, int) and base <= wait < base + spread, reason
        deadline = started + drain_s + 5
        while srv.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert srv.proc.poll() is not None, f"still running after {drain_s + 5} s"
        assert srv.proc.returncode == -signal.SIGTERM, "ends by the signal, as a clean stop"
        still = [
            pid
            for pid in redis_pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        assert not still, f"embedded redis-server outlived the server (exit {srv.proc.returncode})"
        for u in users:
            await u.close()
