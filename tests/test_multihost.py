"""Two hosts sharing one Redis Cluster and one object store (issue 11, item 5).

Always run, as root: `tests/netns.py` makes two network namespaces on a bridge
(hosts A and B); the Redis Cluster (`tests/cluster.py`) and SeaweedFS's S3
gateway (`tests/objectstore.py`) listen on the bridge's address in the root
namespace. Each host runs a real `python -m server serve` process inside its
namespace, bound to its own address, with its own data dir, on the shared
cluster and bucket, and with no JWT or media secret configured: both must come
from Redis. Where namespaces cannot be made the test fails, saying why.

The test talks to both hosts from the root namespace, over the bridge: a post
on A reaches a follower's socket on B within 1 s of A's 201, the media is
served by B (which never saw the upload) byte for byte as by A, and tokens
issued on one host (dev-login, `stories token`) work on the other.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websockets

from server.core.keys import Keys
from server.core.settings import Settings
from server.store.procs import parent_death_signal
from tests.cluster import Cluster, running_cluster
from tests.conftest import sync_redis
from tests.live import Socket
from tests.netns import Host, NetnsUnavailable, Network, two_hosts
from tests.objectstore import ObjectStore, running_object_store

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "tests" / "media" / "rocket.jpg"
PORT = 8000  # every host has a network stack of its own: the same port on each
FAN_OUT_LIMIT_S = 1.0
STOP_GRACE_S = 15.0  # README "Stopping": drain (10 s) + 2 s, then SIGKILL


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """The bridge and hosts A and B; FAILS (never skips) when namespaces cannot be made."""
    with contextlib.ExitStack() as stack:
        try:
            net = stack.enter_context(two_hosts())
        except NetnsUnavailable as exc:
            pytest.fail(f"the multi-host test needs network namespaces: {exc}", pytrace=False)
        yield net


@pytest.fixture(scope="module")
def shared(network: Network, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[Cluster, ObjectStore]]:  # fmt: skip
    """A Redis Cluster and an S3 gateway, both listening on the bridge address."""
    root = tmp_path_factory.mktemp("multihost")
    with (
        running_cluster(root / "cluster", announce_ip=network.gateway) as cluster,
        running_object_store(root / "seaweedfs", ip=network.gateway) as store,
    ):
        yield cluster, store


@dataclass
class Server:
    """A `stories serve` process inside one host's namespace."""

    host: Host
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path
    children: list[psutil.Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        """`http://<host ip>:8000`, reached from the root namespace over the bridge."""
        return f"http://{self.host.ip}:{PORT}"

    def log_tail(self) -> str:
        """The last 3,000 characters of its output."""
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        """SIGTERM by PID, SIGKILL after STOP_GRACE_S; its exit code. Idempotent.

        Raises AssertionError when a child of it, or any process in its
        namespace, is still running afterwards.
        """
        if self.proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.children = psutil.Process(self.proc.pid).children(recursive=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for child in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.wait(5)
        alive = [c.pid for c in self.children if c.is_running()]
        assert not alive, f"children of serve on {self.host.netns} left running: {alive}"
        assert self.host.pids() == [], f"processes left in {self.host.netns}: {self.host.pids()}"
        return int(self.proc.returncode)


def _env(cluster: Cluster, store: ObjectStore, prefix: str) -> dict[str, str]:
    """The environment of a host's server: the shared cluster and bucket, no secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORIES_", "AWS_"))}
    env.pop("REDIS_URL", None)
    env["PYTHONPATH"] = str(REPO)
    env["STORIES_REDIS_URL"] = cluster.url
    for name, value in store.settings(prefix).items():
        env[f"STORIES_{name.upper()}"] = value
    return env


def _start(host: Host, data_dir: Path, env: dict[str, str]) -> Server:
    data_dir.mkdir(parents=True)
    log = data_dir.parent / f"serve-{host.netns}.log"
    args = host.command(sys.executable, "-m", "server", "serve", "--host", host.ip,
                        "--port", str(PORT), "--data-dir", str(data_dir), "--dev-login")  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=data_dir.parent, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=parent_death_signal())  # fmt: skip
    return Server(host, proc, log, data_dir)


def _wait_ready(servers: list[Server], timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(servers)
    while waiting:
        server = waiting[0]
        assert server.proc.poll() is None, (
            f"serve on {server.host.netns} exited:\n{server.log_tail()}"
        )
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                waiting.pop(0)
                continue
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{server.url}/readyz not 200:\n{server.log_tail()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def hosts(network: Network, shared: tuple[Cluster, ObjectStore],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server, str]]:  # fmt: skip
    """Servers on A and B (started together, both ready), and the media key prefix."""
    cluster, store = shared
    root = tmp_path_factory.mktemp("hosts")
    prefix = f"mh{uuid.uuid4().hex[:8]}"
    env = _env(cluster, store, prefix)
    servers: list[Server] = []
    try:
        for host in network.hosts:
            servers.append(_start(host, root / host.netns / "data", env))
        _wait_ready(servers)
        yield servers[0], servers[1], prefix
    finally:
        errors = []
        for server in servers:
            try:
                server.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, errors


def _sign_in(server: Server, handle: str) -> dict[str, Any]:
    r = httpx.post(server.url + "/api/v1/auth/dev-login", json={"handle": handle}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _me(server: Server, token: str) -> httpx.Response:
    return httpx.get(server.url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"},
                     timeout=10)  # fmt: skip


async def _post_and_receive(a: Server, b: Server, poster: dict[str, Any],
                            follower: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], float]:  # fmt: skip
    """Post the photo on A with the follower's socket open on B.

    Returns (A's 201 body, the story.new event B's socket got, seconds from the 201
    to the event's arrival; negative when the event came first).
    """
    url = f"ws://{b.host.ip}:{PORT}/ws?token={follower['token']}"
    async with websockets.connect(url, max_size=None, max_queue=1024) as ws:
        sock = Socket(ws)
        assert (await sock.next("hello"))["user"]["id"] == follower["user"]["id"]
        await sock.next("tray.snapshot")

        async def arrival() -> tuple[dict[str, Any], float]:
            event = await sock.next("story.new", wait_s=10)
            return event, time.monotonic()

        receiving = asyncio.create_task(arrival())
        headers = {"Authorization": f"Bearer {poster['token']}"}
        async with httpx.AsyncClient(base_url=a.url, headers=headers, timeout=30) as http:
            r = await http.post("/api/v1/stories",
                                files={"media": (PHOTO.name, PHOTO.read_bytes(), "image/jpeg")})  # fmt: skip
            created_at = time.monotonic()
        assert r.status_code == 201, r.text
        try:
            event, arrived_at = await asyncio.wait_for(receiving, FAN_OUT_LIMIT_S + 5)
        except TimeoutError:
            pytest.fail(f"no story.new on B's socket within {FAN_OUT_LIMIT_S + 5} s of A's 201; "
                        f"B's log:\n{b.log_tail()}")  # fmt: skip
        return dict(r.json()), event, arrived_at - created_at


def test_a_post_on_host_a_reaches_host_b_with_its_media_and_tokens_cross(hosts, shared):
    a, b, prefix = hosts
    cluster, store = shared

    # dev-login on A; the follower signs in on B and follows through B's API
    alice = _sign_in(a, "alice")
    bob = _sign_in(b, "bob")
    follow = httpx.put(f"{b.url}/api/v1/me/following/{alice['user']['id']}",
                       headers={"Authorization": f"Bearer {bob['token']}"}, timeout=10)  # fmt: skip
    assert follow.status_code == 204, follow.text
    assert _sign_in(b, "alice")["user"]["id"] == alice["user"]["id"]  # one user, whichever host

    created, event, latency_s = asyncio.run(_post_and_receive(a, b, alice, bob))
    assert event["item"]["id"] == created["id"]
    assert event["item"]["owner"]["id"] == alice["user"]["id"]
    assert latency_s <= FAN_OUT_LIMIT_S, f"story.new reached B {latency_s:.3f} s after A's 201"

    # the media, served by B from the object store (B never saw the upload) as by A
    media_url = created["media"]["url"]
    from_a = httpx.get(a.url + media_url, timeout=10)
    from_b = httpx.get(b.url + event["item"]["media"]["url"], timeout=10)
    assert (from_a.status_code, from_b.status_code) == (200, 200), from_b.headers
    assert from_b.content == from_a.content and from_b.content[:2] == b"\xff\xd8"
    assert from_b.headers["content-type"] == "image/jpeg"
    assert httpx.get(b.url + media_url, timeout=10).content == from_a.content  # A's URL too
    assert any(k.startswith(f"media/{alice['user']['id']}/") for k in store.keys(prefix))
    for server in (a, b):
        local = server.data_dir / "media"
        assert not (local.exists() and any(p.is_file() for p in local.rglob("*"))), local

    # a token from A works on B, and B's on A: the JWT secret came from Redis on both
    for server, user in ((b, alice), (a, bob)):
        me = _me(server, user["token"])
        assert me.status_code == 200 and me.json()["id"] == user["user"]["id"], me.text
    assert _me(b, alice["token"] + "x").status_code == 401  # a check that can say no
    redis = sync_redis(cluster.url)
    try:  # generated by whichever host came first, on the cluster
        keys = Keys(Settings().redis_prefix)
        assert all(redis.get(keys.deployment_secret(n)) for n in ("jwt", "media"))
    finally:
        redis.close()

    # `stories token`, run on host B against the cluster, is good on host A
    minted = subprocess.run(
        b.host.command(sys.executable, "-m", "server", "token", alice["user"]["id"],
                       "--redis-url", cluster.url, "--data-dir", str(b.data_dir)),
        env=_env(cluster, store, prefix), cwd=b.data_dir.parent, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    me = _me(a, minted.stdout.strip())
    assert me.status_code == 200 and me.json()["id"] == alice["user"]["id"], me.text

    # stopped by PID: each ends by its SIGTERM, and nothing is left in either namespace
    for server in (a, b):
        code = server.stop()
        assert code == -signal.SIGTERM, f"{server.host.netns}: exit {code}\n{server.log_tail()}"
        assert "Traceback" not in server.log.read_text(), server.log_tail()
