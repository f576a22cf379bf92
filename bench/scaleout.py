"""Scale-out benchmark: several server processes on one Redis, and the tray on a Redis Cluster.

`python bench/scaleout.py` runs four phases on one machine and writes
`bench/results/scaleout.json` and the `scaleout` section of `docs/benchmarks.md`:

1. **Redis messages per post.** P = 1, 2, 4 `python -m server serve` processes
   on one Redis, each behind its own `bench/pubsub_tap.py` relay, which counts
   the pub/sub frames Redis sends that process, by channel. Followers of the
   posting creators are spread over the processes (every process holds some),
   all put on one process, or only a handful spread; a post's count is the sum
   over the taps of the frames on the creator's channel, next to
   `PUBSUB NUMSUB` of that channel and the deliveries the sockets got.
2. **Fan-out with 1, 2, 4 processes.** Three groups run at once, each with its
   own followers (4,000 by default, split evenly over its processes), its own
   creators and the same number of client processes in all; they take turns
   phase by phase (10 posts/s for a few seconds, then a burst), in rounds whose
   order rotates. Figures as in `bench/fanout.py` (whose `run_phase`, `Poster`
   and `ClientPool` this reuses); the ratio is to the 1-process group's phase
   in the same round.
3. **Tray at 2,000 followed: one Redis vs a Redis Cluster.** The data of
   `bench/tray.py` seeded into one Debian redis-server 7 on TCP, into the
   benchmark's embedded Redis and into a local 3+3 cluster of the same
   redis-server 7 (`tests/cluster.py`), a server on each, `GET /api/v1/tray`
   in rotating blocks; in-process `StoryReader.tray` alternating too.
4. **Capacity for 20 M sockets** (`bench/scaleout_capacity.py`) from the
   per-process figures of phase 2: idle RSS per socket, CPU per delivery, CPU
   per sign-in.

Nothing should run beside it: with `--max-load` (default 1.5) it waits up to
`--wait-s` for the 1-minute load average to fall below that before starting,
and up to 3 minutes before each phase (the last phase's own load decays).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench import fanout as fo  # noqa: E402
from bench import harness as h  # noqa: E402
from bench import scaleout_capacity as capacity  # noqa: E402
from bench import tray as tray_bench  # noqa: E402
from bench.baseline_ws import raise_nofile  # noqa: E402
from bench.pubsub_tap import PubSubTap  # noqa: E402
from bench.scaleout_report import render  # noqa: E402

NAME = "scaleout"
PROCESSES = (1, 2, 4)
ENV = {"STORIES_JWT_SECRET": fo.JWT_SECRET, "STORIES_MEDIA_SECRET": fo.MEDIA_SECRET}


# --- seeding ----------------------------------------------------------------------------


@dataclass
class Audience:
    """Seeded followers (user ids and tokens) of a pool of creators; nobody else follows them."""

    tag: str
    followers: list[str]
    tokens: list[str]
    creators: list[dict[str, Any]]

    def paths(self) -> list[str]:
        return [f"/ws?token={t}" for t in self.tokens]


async def seed_audience(store: Any, auth: Any, tag: str, followers: int, creators: int) -> Audience:
    """`followers` users who follow each of `creators` new creators (ids carry `tag`)."""
    now_ms, now_s = store.clock.now_ms(), int(time.time())
    fids = [f"s{tag}f{i:05d}" for i in range(followers)]
    cids = [f"s{tag}c{i:03d}" for i in range(creators)]

    async def in_chunks(coros: list[Any], size: int = 50) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(coros), size):
            out += await asyncio.gather(*coros[start : start + size])
        return out

    owners = await in_chunks([store.users.create(f"bench_{c}", c, uid=c) for c in cids])
    await in_chunks([store.users.create(f"bench_{f}", f, uid=f) for f in fids])
    await fo.follow_all(store, fids, cids, now_ms)
    return Audience(tag, fids, [auth.mint(f, now_s) for f in fids], owners)


# --- a group of server processes ------------------------------------------------------------


class PoolGroup:
    """The `ClientPool` interface `fanout.run_phase` uses, over one pool per server process."""

    def __init__(self, pools: list[fo.ClientPool]) -> None:
        self.pools = pools

    @property
    def connected(self) -> int:
        return sum(p.connected for p in self.pools)

    def progress(self, phase: int) -> int:
        return sum(p.progress(phase) for p in self.pools)

    def cpu_s(self) -> float:
        return sum(p.cpu_s() for p in self.pools)

    def ask(self, msg: tuple[Any, ...], timeout_s: float = 60.0) -> list[Any]:
        return [reply for p in self.pools for reply in p.ask(msg, timeout_s)]


@dataclass
class Group(fo.Target):
    """P server processes as one `fanout.Target`: CPU summed, logs of all, pools grouped."""

    members: list[fo.Target] = field(default_factory=list)

    def cpu_s(self) -> float:
        return sum(m.cpu_s() for m in self.members)

    def sys_s(self) -> float:
        return sum(m.sys_s() for m in self.members)

    def new_log_lines(self) -> list[str]:
        return [f"[{m.name}] {line}" for m in self.members for line in m.new_log_lines()]


def start_group(
    name: str, urls: list[str], tmp: Path, prefix: str, client_procs: list[int],
    owners: list[dict[str, Any]], stack: contextlib.ExitStack,
) -> tuple[Group, list[h.ServerProcess]]:  # fmt: skip
    """One server per URL (stopped by `stack`), a client pool of `client_procs[i]` each."""
    servers, members = [], []
    for i, url in enumerate(urls):
        server = h.ServerProcess(url, tmp / f"{name}-{i}", prefix, dict(ENV))
        server.start()
        stack.callback(server.stop)
        assert server.proc is not None
        pool = fo.ClientPool(f"{name}-{i}", server.port, fo.SNAPSHOT, client_procs[i])
        stack.callback(pool.close)
        servers.append(server)
        members.append(fo.Target(f"{name}-{i}", server.proc.pid, pool, owners,
                                 server.data_dir / "server.log"))  # fmt: skip
    group = Group(name, members[0].pid, PoolGroup([m.pool for m in members]), owners,  # type: ignore[arg-type]
                  members[0].log, members=members)  # fmt: skip
    return group, servers


def numsub(client: redis.Redis, channels: list[str]) -> dict[str, int]:
    return {c.decode() if isinstance(c, bytes) else c: int(n)
            for c, n in client.pubsub_numsub(*channels)}  # fmt: skip


async def wait_numsub(
    client: redis.Redis, channels: list[str], want: int, timeout_s: float = 20.0
) -> dict[str, int]:
    """Wait until every channel has `want` subscribers (or the timeout); the last reading."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = numsub(client, channels)
        if all(n == want for n in got.values()) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


# --- phase 1: Redis messages per post ----------------------------------------------------------


async def messages_per_post(
    url: str, prefix: str, tmp: Path, store: Any, aud: Audience, posts: int, few: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """For P in PROCESSES, behind a tap each: spread, on one process, few spread; counts."""
    sync = redis.Redis.from_url(url)
    poster = fo.Poster(store)
    channels = [store.keys.stories_channel(c["id"]) for c in aud.creators]
    paths = aud.paths()
    rows: list[dict[str, Any]] = []
    phase = 100_000
    try:
        for p in PROCESSES:
            with contextlib.ExitStack() as stack:
                taps = [PubSubTap(url) for _ in range(p)]
                tap_urls = [t.start() for t in taps]
                for t in taps:
                    stack.callback(t.stop)
                group, _ = start_group(f"msg{p}", tap_urls, tmp, prefix, [1] * p,
                                       aud.creators, stack)  # fmt: skip
                n = len(paths)
                cases = [("spread", [n // p] * p)]
                if p > 1:
                    cases.append(("on one process", [n] + [0] * (p - 1)))
                cases.append(("few, spread", [few // p] * p))
                for label, counts in cases:
                    phase += 1
                    holding = sum(1 for c in counts if c)
                    offset = 0
                    for member, count in zip(group.members, counts, strict=True):
                        if count:
                            got = member.pool.connect(paths[offset : offset + count])
                            if got["connected"] != count:
                                raise RuntimeError(f"{member.name}: {got}")
                        offset += count
                    subs = await wait_numsub(sync, channels, holding)
                    before = [t.messages() for t in taps]
                    for i in range(posts):
                        await poster.post(aud.creators[i % len(aud.creators)], phase, i)
                        await asyncio.sleep(0.02)
                    expected = sum(counts) * posts
                    deadline = time.monotonic() + 30
                    while group.pool.progress(phase) < expected and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.5)  # a late duplicate would still be counted
                    after = [t.messages() for t in taps]
                    per_process = [sum(a[c] - b[c] for c in channels) / posts
                                   for a, b in zip(after, before, strict=True)]  # fmt: skip
                    reports = group.pool.ask(("report", phase, posts), 60)
                    row = {
                        "processes": p, "case": label, "followers": sum(counts),
                        "followers_per_process": counts, "processes_holding": holding,
                        "numsub": sorted(set(subs.values())),
                        "messages_per_post": round(sum(per_process), 3),
                        "messages_per_post_per_process": [round(x, 3) for x in per_process],
                        "deliveries_per_post": round(sum(r["deliveries"] for r in reports) / posts, 2),
                        "lost": sum(r["lost"] for r in reports),
                        "pattern_messages": sum(t.pattern_messages() for t in taps),
                        "posts": posts,
                    }  # fmt: skip
                    rows.append(row)
                    print(f"  P={p} {label:15} followers={row['followers']:4} holding={holding} "
                          f"NUMSUB={row['numsub']} messages/post={row['messages_per_post']} "
                          f"{row['messages_per_post_per_process']} deliveries/post="
                          f"{row['deliveries_per_post']} lost={row['lost']}", flush=True)  # fmt: skip
                    for member, count in zip(group.members, counts, strict=True):
                        if count:
                            member.pool.ask(("drop",))
                    await wait_numsub(sync, channels, 0)
    finally:
        sync.close()
    return rows


# --- phase 2: fan-out with 1, 2, 4 processes ---------------------------------------------------


async def connect_group(group: Group, paths: list[str]) -> list[dict[str, Any]]:
    """Connect `paths` split evenly over the group's processes; RSS and CPU per socket."""
    out = []
    for i, m in enumerate(group.members):
        share = paths[i :: len(group.members)]
        rss0, cpu0, t0 = fo.rss(m.pid), m.cpu_s(), time.perf_counter()
        got = m.pool.connect(share)
        connect_s, cpu = time.perf_counter() - t0, m.cpu_s() - cpu0
        await asyncio.sleep(3.0)  # let it go idle
        rss1 = fo.rss(m.pid)
        if got["connected"] != len(share):
            raise RuntimeError(f"{m.name}: only {got['connected']} of {len(share)} connected")
        row = {
            "process": m.name, "sockets": got["connected"], "connect_s": round(connect_s, 1),
            "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_mib": round(rss1 / 2**20, 1),
            "kib_per_idle_socket": round((rss1 - rss0) / max(1, len(share)) / 1024, 1),
            "sign_in_cpu_ms": round(cpu / max(1, len(share)) * 1000, 2),
            "errors": got["errors"],
        }  # fmt: skip
        print(f"  {m.name:8} {row['sockets']} sockets: {row['kib_per_idle_socket']} KiB each, "
              f"{row['sign_in_cpu_ms']} ms CPU per sign-in, RSS {row['rss_before_mib']} → "
              f"{row['rss_after_mib']} MiB", flush=True)  # fmt: skip
        out.append(row)
    return out


async def fanout_by_processes(
    url: str, prefix: str, tmp: Path, store: Any, audiences: dict[int, Audience],
    args: argparse.Namespace, stack: contextlib.ExitStack,
) -> dict[str, Any]:  # fmt: skip
    """Three groups (1, 2, 4 processes) at once; phases in rotating order; raw rows."""
    groups: dict[int, Group] = {}
    for p in PROCESSES:
        share = args.clients // p
        group, _ = start_group(f"p{p}", [url] * p, tmp, prefix, [share] * p,
                               audiences[p].creators, stack)  # fmt: skip
        groups[p] = group
    idle = {}
    for p, group in groups.items():
        idle[p] = await connect_group(group, audiences[p].paths())
    poster = fo.Poster(store)
    phases = [("steady10", 10.0, int(10 * args.phase_s)), ("burst", None, args.burst)]
    rows = []
    phase_id = 0
    for rnd in range(args.rounds):
        for n, (kind, rate, posts) in enumerate(phases):
            k = (rnd * len(phases) + n) % len(PROCESSES)
            order = list(PROCESSES[k:] + PROCESSES[:k])
            for p in order:
                phase_id += 1
                print(f"  round {rnd + 1}, {p} process(es):", flush=True)
                res = await fo.run_phase(groups[p], poster, phase_id, kind, rate, posts,
                                         args.drain_s)  # fmt: skip
                res.update(processes=p, round=rnd + 1)
                res.pop("server_log", None)
                rows.append(res)
    return {"idle": idle, "phases": rows}


def held_back_by(r: dict[str, Any], cores: int) -> str:
    """`fanout._bound` for a group: server CPU when its processes used ≥ 0.8 of each core
    they can have (min(P, cores)), else the clients or the rest of the machine."""
    offered = r["offered_per_s"]
    if offered and r["deliveries_per_s"] >= 0.95 * offered and r["p99_ms"] < 500:
        return "kept up"
    if r["server_cpu_share"] >= 0.8 * min(r["processes"], cores):
        return "server CPU"
    return "clients / machine"


def judge_fanout(run: dict[str, Any], cores: int) -> list[dict[str, Any]]:
    """Per phase kind and P: the rounds' figures and their ratios to P=1 of the same round."""
    by = {(r["phase"], r["round"], r["processes"]): r for r in run["phases"]}
    out = []
    for kind in dict.fromkeys(r["phase"] for r in run["phases"]):
        for p in PROCESSES:
            rounds = [r for r in run["phases"] if r["phase"] == kind and r["processes"] == p]
            rate_ratios, p99_ratios = [], []
            for r in rounds:
                base = by.get((kind, r["round"], 1))
                if base and base["deliveries_per_s"] and base["p99_ms"]:
                    rate_ratios.append(r["deliveries_per_s"] / base["deliveries_per_s"])
                    p99_ratios.append(r["p99_ms"] / base["p99_ms"])
            out.append({
                "phase": kind, "processes": p, "rounds": len(rounds),
                "delivered_per_s": round(statistics.median(r["deliveries_per_s"] for r in rounds), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 1),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 1),
                "lost": sum(r["lost"] for r in rounds),
                "cpu_us_per_delivery": round(statistics.median(
                    r["server_cpu_us_per_delivery"] for r in rounds), 2),
                "server_cores": round(statistics.median(r["server_cpu_share"] for r in rounds), 2),
                "rate_ratio": round(statistics.median(rate_ratios), 2) if rate_ratios else math.nan,
                "p99_ratio": round(statistics.median(p99_ratios), 2) if p99_ratios else math.nan,
                "held_back_by": sorted({held_back_by(r, cores) for r in rounds}),
                "rate_ratios": [round(x, 2) for x in rate_ratios],
                "p99_ratios": [round(x, 2) for x in p99_ratios],
            })  # fmt: skip
    return out


# --- phase 3: the tray on one Redis and on a cluster -------------------------------------------


SINGLE, EMBEDDED, CLUSTER = "one Redis 7 (TCP)", "embedded Redis (unix socket)", "cluster"


@contextlib.contextmanager
def standalone_redis(folder: Path) -> Any:
    """One Debian redis-server 7 on a free 127.0.0.1 port, the cluster nodes' binary and
    flags without cluster mode (no persistence); yields its URL; stopped by its PID."""
    from server.store.procs import parent_death_signal
    from tests.cluster import binaries

    server, _ = binaries()
    port = h.free_port()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=parent_death_signal(),
        )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(redis.RedisError), redis.Redis.from_url(url) as r:
                if r.ping():
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {port} did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()  # SIGTERM to that PID
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def tray_versus_cluster(
    url: str, prefix: str, tmp: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """`bench/tray.py`'s data on one Redis 7, the embedded Redis and a local cluster.

    The target compares the cluster with the one Redis 7: the same redis-server
    binary and flags, over TCP too, so the ratio is what the cluster costs.
    """
    from server.stories.reader import StoryReader
    from tests.cluster import running_cluster

    viewer = tray_bench.viewer_id(2000)
    with running_cluster(tmp / "cluster") as cluster, standalone_redis(tmp / "redis7") as r7:
        urls = {SINGLE: r7, EMBEDDED: url, CLUSTER: cluster.url}
        stores = {name: h.in_process_store(u, prefix, tmp / f"tray-{i}")
                  for i, (name, u) in enumerate(urls.items())}  # fmt: skip
        expected = {}
        try:
            for name, store in stores.items():
                t0 = time.perf_counter()
                expected[name] = await tray_bench.seed(store, random.Random(20261129))
                print(f"  seeded the tray data into {name} in {time.perf_counter() - t0:.1f} s",
                      flush=True)  # fmt: skip
            assert all(e == expected[CLUSTER] for e in expected.values()), expected
            readers = {name: StoryReader(s) for name, s in stores.items()}
            rings = {name: len(await r.tray(viewer)) for name, r in readers.items()}
            assert set(rings.values()) == {expected[CLUSTER][2000]}, rings
            times: dict[str, list[float]] = {name: [] for name in stores}
            for _ in range(args.tray_in_process_calls):
                for name, reader in readers.items():
                    t0 = time.perf_counter()
                    await reader.tray(viewer)
                    times[name].append(time.perf_counter() - t0)
            in_process = {name: h.summary(t, sum(t)) for name, t in times.items()}
        finally:
            for store in stores.values():
                await store.redis.aclose()
        with contextlib.ExitStack() as stack:
            servers = {}
            for i, (name, server_url) in enumerate(urls.items()):
                server = h.ServerProcess(server_url, tmp / f"tray-server-{i}", prefix, dict(ENV))
                server.start()
                stack.callback(server.stop)
                servers[name] = server
            http = await _tray_http(servers, expected[CLUSTER][2000], args)
    return {"rings": rings[CLUSTER], "in_process": in_process, "http": http}


async def _tray_http(
    servers: dict[str, h.ServerProcess], rings: int, args: argparse.Namespace
) -> dict[str, Any]:
    samples = {name: h.Samples() for name in servers}
    async with contextlib.AsyncExitStack() as stack:
        clients, calls = {}, {}
        for name, server in servers.items():
            clients[name] = await stack.enter_async_context(h.http_clients(server.base_url, 1))
            token, _ = await h.dev_login(clients[name][0], "bench_v2000")
            headers = {"Authorization": f"Bearer {token}"}
            resp = await clients[name][0].get("/api/v1/tray", headers=headers)
            resp.raise_for_status()
            assert len(resp.json()["items"]) == rings, (name, len(resp.json()["items"]))

            def call(cl: Any, headers: dict[str, str] = headers) -> Any:
                return cl.get("/api/v1/tray", headers=headers)

            calls[name] = call
            await h.closed_loop(call, clients[name], concurrency=1, count=20)  # warm
        names = list(servers)
        for rnd in range(args.tray_rounds):
            k = rnd % len(names)
            for name in names[k:] + names[:k]:
                await h.closed_loop(calls[name], clients[name], concurrency=1,
                                    duration_s=args.tray_block_s, into=samples[name])  # fmt: skip
    return {name: s.summary() for name, s in samples.items()}


# --- the run ------------------------------------------------------------------------------------


def wait_for_quiet(max_load: float, wait_s: float) -> list[float]:
    """Wait (up to `wait_s`) for the 1-minute load average to fall to `max_load`; the load then."""
    deadline = time.monotonic() + wait_s
    while (load := h.loadavg())[0] > max_load and time.monotonic() < deadline:
        print(f"load average {load}: above {max_load}, waiting", flush=True)
        time.sleep(20)
    return h.loadavg()


def measured_for_capacity(run: dict[str, Any]) -> dict[str, float]:
    """The per-process inputs of the estimate: the 1-process group's figures."""
    one = run["fanout"]["idle"]["1"][0]
    j = {(r["phase"], r["processes"]): r for r in run["fanout_judged"]}
    return {
        "kib_per_socket": one["kib_per_idle_socket"],
        "base_rss_mib": one["rss_before_mib"],
        "sign_in_cpu_ms": one["sign_in_cpu_ms"],
        "cpu_us_per_delivery": j[("steady10", 1)]["cpu_us_per_delivery"],
        "cpu_us_per_delivery_burst": j[("burst", 1)]["cpu_us_per_delivery"],
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from server.core.auth import Authenticator
    from server.core.settings import Settings

    started = time.perf_counter()
    nofile = raise_nofile()
    out: dict[str, Any] = {"name": NAME}
    with tempfile.TemporaryDirectory(prefix="stories-bench-scaleout-") as raw:
        tmp = Path(raw)
        with h.redis_for_bench(tmp) as (url, prefix):
            m = h.machine(url)
            m["open_files_limit"] = nofile
            with contextlib.suppress(Exception):
                from tests.cluster import binaries

                version = subprocess.run([binaries()[0], "--version"], capture_output=True,
                                         text=True).stdout  # fmt: skip
                m["debian_redis"] = version.split("v=")[1].split()[0]
            store = h.in_process_store(url, prefix, tmp / "in-process")
            auth = Authenticator(Settings(jwt_secret=fo.JWT_SECRET, data_dir=str(tmp)))
            try:
                t0 = time.perf_counter()
                msg_aud = await seed_audience(store, auth, "m", args.msg_followers, 4)
                audiences = {p: await seed_audience(store, auth, f"{p}", args.followers,
                                                    args.creators) for p in PROCESSES}  # fmt: skip
                out["seed_s"] = round(time.perf_counter() - t0, 1)
                print(f"seeded {args.msg_followers} + 3 x {args.followers} followers in "
                      f"{out['seed_s']} s", flush=True)  # fmt: skip
                if "messages" in args.phases:
                    out.setdefault("load_at_phase", {})["messages"] = wait_for_quiet(
                        args.max_load, 180
                    )
                    print("phase 1: Redis messages per post", flush=True)
                    out["messages"] = await messages_per_post(url, prefix, tmp, store, msg_aud,
                                                              args.msg_posts, args.few)  # fmt: skip
                if "fanout" in args.phases:
                    out.setdefault("load_at_phase", {})["fan-out"] = wait_for_quiet(
                        args.max_load, 180
                    )
                    print("phase 2: fan-out with 1, 2, 4 processes", flush=True)
                    with contextlib.ExitStack() as stack:
                        fan = await fanout_by_processes(url, prefix, tmp, store, audiences,
                                                        args, stack)  # fmt: skip
                    out["fanout"] = {"idle": {str(k): v for k, v in fan["idle"].items()},
                                     "phases": fan["phases"]}  # fmt: skip
                    out["fanout_judged"] = judge_fanout(out["fanout"], m["usable_cpus"])
            finally:
                await store.redis.aclose()
            if "tray" in args.phases:
                out.setdefault("load_at_phase", {})["tray"] = wait_for_quiet(args.max_load, 180)
                print("phase 3: tray, one Redis vs a cluster", flush=True)
                out["tray"] = await tray_versus_cluster(url, prefix, tmp, args)
    m["loadavg_at_end"] = h.loadavg()
    if "fanout" in out:
        out["capacity"] = capacity.estimate(measured_for_capacity(out))
    return {
        **out,
        "date": h.now_utc(),
        "machine": m,
        "command": "python bench/scaleout.py " + " ".join(sys.argv[1:]),
        "config": {k: v for k, v in vars(args).items() if k not in ("report_only", "no_doc")},
        "duration_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description="scale-out benchmark (see the module docstring)")
    p.add_argument("--followers", type=int, default=4000, help="followers per group (phase 2)")
    p.add_argument("--clients", type=int, default=4, help="client processes per group")
    p.add_argument("--creators", type=int, default=12, help="creators posts rotate over")
    p.add_argument("--phase-s", type=float, default=8.0, help="length of the steady phase")
    p.add_argument("--burst", type=int, default=100, help="posts in the burst")
    p.add_argument("--rounds", type=int, default=4, help="rounds of phase 2")
    p.add_argument("--drain-s", type=float, default=30.0)
    p.add_argument("--msg-followers", type=int, default=400, help="followers in phase 1")
    p.add_argument("--msg-posts", type=int, default=20, help="posts per case of phase 1")
    p.add_argument("--few", type=int, default=8, help="followers of the 'few' case of phase 1")
    p.add_argument("--tray-rounds", type=int, default=9)
    p.add_argument("--tray-block-s", type=float, default=2.0)
    p.add_argument("--tray-in-process-calls", type=int, default=300)
    p.add_argument("--phases", default="messages,fanout,tray", type=lambda s: s.split(","))
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--wait-s", type=float, default=900.0, help="how long to wait for --max-load")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="re-render the last results")
    args = p.parse_args()
    if args.report_only:
        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
        if "fanout" in run:  # judged again from the raw figures, with this tree's code
            run["fanout_judged"] = judge_fanout(run["fanout"], run["machine"]["usable_cpus"])
            run["capacity"] = capacity.estimate(measured_for_capacity(run))
    else:
        load = wait_for_quiet(args.max_load, args.wait_s)
        print(f"load average at start {load} ({os.cpu_count()} CPUs)", flush=True)
        run = asyncio.run(main_async(args))
        print(f"results: {h.write_results(NAME, run)}")
    return h.publish(NAME, render(run), args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
