"""A killed server leaves nothing behind: partial files of captures and uploads are
removed when the next process starts on the data dir, unless a live process owns them.

Real processes (`python -m server serve`, a `sleep` stand-in for a worker that died),
a real aiortc client capturing over HTTP. Every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import aioice.ice
import httpx
import psutil
import pytest
from starlette.testclient import TestClient

from server.store import procs
from server.store.scratch import process_dir, sweep, sweep_data_dir
from tests.conftest import MEDIA
from tests.test_capture_core import Client as Camera
from tests.test_cli import User, free_port, serving, wait_until
from tests.test_redis_orphans import ready, redis_serving, stop_all


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """aioice does not offer 127.0.0.1 by itself; nothing may leave the machine."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def dead_tag() -> str:
    """The tag of a process that ran and is gone."""
    proc = subprocess.Popen(["sleep", "30"])
    tag = procs.process_tag(proc.pid)
    proc.kill()
    proc.wait()
    return tag


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_sweep_keeps_only_what_live_processes_own(tmp_path):
    root = tmp_path / "tmp"
    mine = process_dir(root)
    (mine / "u1").mkdir()
    (mine / "u1" / "upload").write_bytes(b"in use")
    gone = root / dead_tag()
    (gone / "u2").mkdir(parents=True)
    (gone / "u2" / "upload").write_bytes(b"half")
    reused = root / f"{os.getpid()}-1"  # our PID, an earlier life of it
    reused.mkdir()
    (root / "0123abcd").mkdir()  # the layout before process folders
    (root / "0123abcd" / "upload").write_bytes(b"half")
    (root / "x.mp4.part").write_bytes(b"half")
    removed = sweep(root)
    assert sorted(p.name for p in removed) == sorted(
        ["0123abcd", gone.name, reused.name, "x.mp4.part"]
    )
    assert files_under(root) == [f"{mine.name}/u1/upload"]
    assert sweep(tmp_path / "missing") == []


def test_sweep_data_dir_covers_captures_and_uploads(tmp_path):
    for name in ("captures", "tmp"):
        (tmp_path / name / dead_tag()).mkdir(parents=True)
        next((tmp_path / name).iterdir()).joinpath("a.mp4.part").write_bytes(b"half")
        (tmp_path / name / "loose.part").write_bytes(b"half")
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "kept.jpg").write_bytes(b"a story")
    assert len(sweep_data_dir(tmp_path)) == 4
    assert files_under(tmp_path) == ["media/kept.jpg"]


async def test_server_killed_mid_capture_leaves_no_partial_file(tmp_path):
    data = tmp_path / "d"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    camera = Camera()
    try:
        with serving(data, port, "--dev-login") as (proc, _):
            await asyncio.to_thread(ready, base)
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                with httpx.Client(base_url=base, timeout=10) as sync:
                    bob = await asyncio.to_thread(User, sync, "bob")
                offer = {"sdp": await camera.offer_sdp(), "type": "offer"}
                r = await http.post("/api/v1/captures", json=offer, headers=bob.headers)
                assert r.status_code == 201, r.text
                await camera.accept(r.json()["sdp"])
                await camera.media_time(1.0)
            parts = [p for p in (data / "captures").rglob("*.part")]
            assert parts, files_under(data / "captures")  # the capture is being written
            proc.kill()
            proc.wait(10)
        await camera.close()
        assert all(p.exists() for p in parts)  # what the killed process left

        port = free_port()
        with serving(data, port) as (proc, log):
            await asyncio.to_thread(ready, f"http://127.0.0.1:{port}")
            assert not any(p.exists() for p in parts)
            assert files_under(data / "captures") == []
            assert files_under(data / "tmp") == []
            assert "Traceback" not in log.read_text()
    finally:
        await camera.close()
        stop_all(redis_serving(data))


def test_a_clean_shutdown_removes_the_process_folders(settings, login):
    """Stopping the app (its lifespan) leaves no empty `tmp/<tag>` or `captures/<tag>`."""
    from server.app import create_app
    from server.store.procs import process_tag

    data = Path(settings.data_dir)
    with TestClient(create_app(settings)) as client:
        r = client.post("/api/v1/auth/dev-login", json={"handle": "bob"})
        token = r.json()["token"]
        with (MEDIA / "rocket.jpg").open("rb") as fh:
            posted = client.post("/api/v1/stories", files={"media": ("r.jpg", fh)},
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert posted.status_code == 201
        assert (data / "captures" / process_tag()).is_dir()
    for root in ("tmp", "captures"):
        assert not (data / root / process_tag()).exists(), root


def test_uploads_work_in_the_process_folder(tmp_path):
    port = free_port()
    data = tmp_path / "d"
    try:
        with serving(data, port, "--dev-login") as (proc, _):
            ready(f"http://127.0.0.1:{port}")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                User(http, "ann").post_media("rocket.jpg")
            wait_until(lambda: (data / "tmp").is_dir(), 5, "tmp dir")
            assert [p.name for p in (data / "tmp").iterdir()] == [procs.process_tag(proc.pid)]
            assert files_under(data / "tmp") == []  # the upload's folder went with it
    finally:
        stop_all(redis_serving(data))


def test_a_restarted_worker_removes_a_dead_workers_folder_and_keeps_the_live_ones(tmp_path):
    """`--workers 2` share the data dir: when one is killed, uvicorn starts another, which
    removes the dead worker's partial files and leaves the live worker's in-progress ones."""
    data = tmp_path / "d"
    port = free_port()
    try:
        with serving(data, port, "--workers", "2") as (proc, log):
            ready(f"http://127.0.0.1:{port}")
            captures = data / "captures"
            wait_until(lambda: len(list(captures.iterdir())) == 2, 30, "a folder per worker")
            workers = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
            folders = {d.name: d for d in captures.iterdir()}
            tags = {procs.process_tag(pid): pid for pid in workers}
            assert set(folders) <= set(tags), (folders, tags)
            for folder in folders.values():  # each worker is writing a capture
                (folder / "c.mp4.part").write_bytes(b"half")
            dead, live = sorted(folders)
            os.kill(tags[dead], signal.SIGKILL)
            wait_until(lambda: not folders[dead].exists(), 30, "the dead worker's folder gone")
            assert (folders[live] / "c.mp4.part").read_bytes() == b"half"
            assert len(list(captures.iterdir())) == 2  # the live one's and the new worker's
            assert "Traceback" not in log.read_text()
    finally:
        stop_all(redis_serving(data))
