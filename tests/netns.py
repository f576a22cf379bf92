"""Two "hosts" for tests: Linux network namespaces on a bridge, made and removed by the test.

`two_hosts()` makes, with `ip` (iproute2; needs root, or CAP_NET_ADMIN and
CAP_SYS_ADMIN):

- a bridge `st-br<r>` in the root namespace with `10.<x>.<y>.1/24` (the address
  the shared services, Redis Cluster and the object store, bind and announce);
- two namespaces `st-a-<r>` and `st-b-<r>`, each with `lo` up and a veth whose
  outer end is a port of the bridge and whose inner end (`eth0`) has
  `10.<x>.<y>.2/24` resp. `.3/24`.

`<r>` is random per run and the /24 is one no address or route of this machine
uses, so runs side by side do not meet. Everything made is removed at the end,
even when the body raises: the namespaces (which takes their veth ends with
them), then the links; a namespace still holding a process is refused
(`HostsLeftBehind`), since deleting it would leave that process running unseen.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


class NetnsUnavailable(RuntimeError):
    """`ip netns add` (or another step of the set-up) is not permitted or failed."""


class HostsLeftBehind(RuntimeError):
    """At clean-up a namespace still ran processes, or a made link or namespace remained."""


@dataclass(frozen=True)
class Host:
    """One namespace: its name and its address on the bridge."""

    netns: str
    ip: str

    def command(self, *args: str) -> list[str]:
        """`args` as run inside this namespace: `ip netns exec <netns> args...`.

        `ip netns exec` execs the command (no fork), so the PID of a `Popen`
        of this list is the PID of the command itself.
        """
        return ["ip", "netns", "exec", self.netns, *args]

    def pids(self) -> list[int]:
        """PIDs of every process in this namespace now (`ip netns pids`)."""
        out = _ip("netns", "pids", self.netns).stdout
        return sorted(int(p) for p in out.split())


@dataclass(frozen=True)
class Network:
    """The bridge, its address (the root namespace's, for shared services) and the hosts."""

    bridge: str
    gateway: str
    a: Host
    b: Host

    @property
    def hosts(self) -> tuple[Host, Host]:
        """`(a, b)`."""
        return (self.a, self.b)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _used_subnets() -> set[tuple[int, int]]:
    """`(x, y)` of every 10.x.y.* address or route the root namespace knows."""
    text = _ip("-4", "addr").stdout + _ip("-4", "route", "show", "table", "all").stdout
    used = set()
    for word in text.replace("/", " ").split():
        parts = word.split(".")
        if len(parts) == 4 and parts[0] == "10" and all(p.isdigit() for p in parts):
            used.add((int(parts[1]), int(parts[2])))
    return used


def _free_subnet() -> str:
    """`10.x.y` of a /24 nothing here uses (x in 100..249, to stay off common ranges)."""
    used = _used_subnets()
    rng = random.SystemRandom()
    for _ in range(1000):
        x, y = rng.randrange(100, 250), rng.randrange(0, 256)
        if (x, y) not in used:
            return f"10.{x}.{y}"
    raise NetnsUnavailable("no free 10.x.y.0/24 for the test network")


def _check_permitted(probe: str) -> None:
    """Fail clearly when this process may not make network namespaces."""
    if os.geteuid() != 0:
        hint = "not root: the multi-host test runs as root (or with CAP_NET_ADMIN + CAP_SYS_ADMIN)"
    else:
        hint = "running as root, but the kernel or the container refuses"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsUnavailable(
            f"`ip netns add` is not permitted here ({hint}): {done.stderr.strip()}"
        )


def _run_all(steps: Sequence[Sequence[str]]) -> None:
    for step in steps:
        _ip(*step)


def _remove(network: Network, made_links: list[str], made_netns: list[str]) -> None:
    """Delete what was made; raises HostsLeftBehind if processes or objects remain."""
    problems = []
    for name in made_netns:
        pids = _ip("netns", "pids", name, check=False).stdout.split()
        if pids:
            problems.append(f"namespace {name} still runs PIDs {' '.join(pids)}")
            continue  # deleting it would hide those processes; leave it for a look
        _ip("netns", "del", name, check=False)
    for link in made_links:
        if _ip("link", "show", link, check=False).returncode == 0:
            _ip("link", "del", link, check=False)
    left = sorted((set(made_netns) & netns_names()) | (set(made_links) & link_names()))
    if left:
        problems.append(f"left behind: {', '.join(left)} (bridge {network.bridge})")
    if problems:
        raise HostsLeftBehind("; ".join(problems))


@contextlib.contextmanager
def two_hosts() -> Iterator[Network]:
    """Make the bridge and the two namespaces (see the module), yield them, remove them.

    Raises NetnsUnavailable (with the reason) when namespaces cannot be made,
    HostsLeftBehind at the end when something could not be removed.
    """
    tag = secrets.token_hex(3)
    subnet = _free_subnet()
    network = Network(
        bridge=f"st-br{tag}",
        gateway=f"{subnet}.1",
        a=Host(f"st-a-{tag}", f"{subnet}.2"),
        b=Host(f"st-b-{tag}", f"{subnet}.3"),
    )
    made_links: list[str] = []
    made_netns: list[str] = []
    failure: BaseException | None = None
    try:
        made_netns.append(network.a.netns)
        _check_permitted(network.a.netns)
        _run_all([["link", "add", network.bridge, "type", "bridge"]])
        made_links.append(network.bridge)
        _run_all([["addr", "add", f"{network.gateway}/24", "dev", network.bridge],
                  ["link", "set", network.bridge, "up"]])  # fmt: skip
        for host, side in ((network.a, "a"), (network.b, "b")):
            outer = f"st-v{side}{tag}"
            if host.netns not in made_netns:
                made_netns.append(host.netns)
                _ip("netns", "add", host.netns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            made_links.append(outer)
            _run_all([
                ["link", "set", outer, "master", network.bridge],
                ["link", "set", outer, "up"],
                ["-n", host.netns, "link", "set", "lo", "up"],
                ["-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0"],
                ["-n", host.netns, "link", "set", "eth0", "up"],
            ])  # fmt: skip
        yield network
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            _remove(network, made_links, made_netns)
        except HostsLeftBehind:
            if failure is None:
                raise  # else: the body's own error is the one to see first


def connects(host: Host, ip: str, port: int, timeout_s: float = 5.0) -> bool:
    """True when a TCP connection from inside `host` to `ip`:`port` is accepted."""
    probe = f"import socket; socket.create_connection(({ip!r}, {port}), {timeout_s}).close()"
    done = subprocess.run(host.command(sys.executable, "-c", probe), capture_output=True,
                          timeout=timeout_s + 10)  # fmt: skip
    return done.returncode == 0


def netns_names() -> set[str]:
    """Names of every namespace `ip netns` knows now."""
    return {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()}


def link_names() -> set[str]:
    """Names of every link of the root namespace now."""
    out = _ip("-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
