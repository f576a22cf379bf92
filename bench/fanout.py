"""Fan-out benchmark: one post pushed to 1,000 and 5,000 followers' WebSockets.

`python bench/fanout.py [--followers 1000,5000]` starts an embedded Redis, the
stories server (`python -m server serve`, one uvicorn worker) and the baseline
(`bench/baseline_ws.py`: the `websockets` library's own server relaying each
Redis message with `websockets.broadcast()`), seeds the followers as real users
who follow the creators (straight into Redis with `UserStore` and `Graph`, tokens
minted with `Authenticator.mint` and the server's `jwt_secret`), and connects the
same number of WebSockets to each from several client processes.

A "post" is the exact `story.new` bus event a real post publishes:
`StoryWriter._publish_new` is called in the benchmark process, so the item is
recorded, indexed and published by the server's own Lua script (only the media
processing of `POST /api/v1/stories` is skipped: it costs 17-65 ms of the
server's CPU per post, see `bench/post.py`, and would be charged to the fan-out).
The baseline subscribes to other creators' channels and gets the same event bytes,
made by the same code, and relays them unchanged. The caption carries the post's
wall-clock time; clients (same machine, same clock) take post→receipt latency and
count deliveries per connection, so a missing or duplicated event is seen.

Each follower count runs the same phases on both servers, interleaved: a steady
10 posts/s, a steady 20 posts/s, and a burst posted back to back. Server CPU is
psutil's user+system time of the server's PID over the phase, divided by the
events delivered; memory per idle connection is the server's RSS growth per
connected socket. Posts rotate over a pool of creators (every follower follows
all of them) so each creator keeps a realistic number of active items.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import re
import signal
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench import harness as h  # noqa: E402
from bench import storms  # noqa: E402
from bench.baseline_ws import BaselineProcess, raise_nofile  # noqa: E402
from bench.wsclient import WSClient, ws_connect  # noqa: E402

NAME = "fanout"
JWT_SECRET = "bench-fanout-jwt-secret-0123456789abcdef"
MEDIA_SECRET = "bench-media-secret"  # what harness.in_process_store signs with
CAPTION_RE = re.compile(rb'"caption":"bench (\d+) (\d+) (\d+\.\d+)"')
SNAPSHOT = b'"type":"tray.snapshot"'
STORIES, BASELINE, FLOOR = "stories", "baseline", "uvicorn-idle"
HOUR_MS = 3600 * 1000
PROBE_ID = "fprobe"  # the storm probe's user: follows nobody

# Targets of the issue
TARGET_P99_RATIO = 1.1  # 5,000 followers, 10 posts/s: p99 ≤ 1.1x the baseline's
TARGET_RATE_RATIO = 0.9  # at saturation: delivered/s ≥ 0.9x the baseline's
TARGET_CPU_RATIO = 1.25  # server CPU per delivered event ≤ 1.25x the baseline's
TARGET_IDLE_OVER_FLOOR_KIB = 4.0  # server RSS per idle connection above uvicorn's own floor
TARGET_SIGN_IN_CPU_MS = 1.5  # server CPU per socket signing in (normal connect and storm)


# --- the client processes --------------------------------------------------------------


@dataclass
class PhaseStats:
    """What one client process saw of one phase."""

    deliveries: int = 0
    frames: int = 0
    first: float = math.inf
    last: float = 0.0
    latencies_ms: array[float] = field(default_factory=lambda: array("f"))


class Follower(WSClient):
    """Counts `story.new` deliveries per phase; checks order (one post index after another)."""

    def __init__(self, host: str, path: str, marker: bytes, stats: dict[int, PhaseStats]) -> None:
        super().__init__(host, path)
        self.marker = marker
        self.stats = stats
        self.counts: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.out_of_order: dict[int, int] = {}
        self.resyncs = 0  # snapshots after the first: the server resynced this socket

    def on_text(self, payload: bytes, now: float) -> None:
        if not self.ready.done():
            if self.marker in payload:
                self.ready.set_result(True)
            return
        if SNAPSHOT in payload:
            self.resyncs += 1
        counted = False
        for m in CAPTION_RE.finditer(payload):
            phase, idx, ts = int(m[1]), int(m[2]), float(m[3])
            st = self.stats.get(phase)
            if st is None:
                st = self.stats[phase] = PhaseStats()
            st.deliveries += 1
            if not counted:
                st.frames += 1
                counted = True
            st.latencies_ms.append((now - ts) * 1000.0)
            if now < st.first:
                st.first = now
            if now > st.last:
                st.last = now
            self.counts[phase] = self.counts.get(phase, 0) + 1
            if idx <= self.last.get(phase, -1):
                self.out_of_order[phase] = self.out_of_order.get(phase, 0) + 1
            self.last[phase] = idx


async def _client_loop(cmd_in: Connection, pipe: Connection, port: int, marker: bytes) -> None:
    stats: dict[int, PhaseStats] = {}
    clients: list[Follower] = []
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def read_commands() -> None:  # blocking reads in a thread: a pipe the loop watched
        while True:  # would turn non-blocking, and a large message would fail with EAGAIN
            try:
                msg = cmd_in.recv()
            except (EOFError, OSError):  # the parent is gone: close and exit
                msg = ("close",)
            loop.call_soon_threadsafe(commands.put_nowait, msg)
            if msg[0] == "close":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    proc = psutil.Process()

    async def connect(paths: list[str], concurrency: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        errors: dict[str, int] = {}
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str) -> None:
            async with gate:
                for attempt in range(3):
                    try:
                        client = await ws_connect(
                            lambda: Follower("127.0.0.1", path, marker, stats), port
                        )
                        clients.append(client)  # type: ignore[arg-type]
                        return
                    except (OSError, ConnectionError, TimeoutError) as exc:
                        key = f"{type(exc).__name__}: {str(exc)[:80]}"
                        errors[key] = errors.get(key, 0) + 1
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one(p) for p in paths))
        return {"connected": len(clients), "errors": errors, "s": time.perf_counter() - t0}

    while True:
        cmd, *args = await commands.get()
        if cmd == "connect":
            pipe.send(await connect(*args))
        elif cmd == "drop":  # the close storm: every socket at once
            dropped = storms.drop_all(clients)
            clients.clear()
            pipe.send(dropped)
        elif cmd == "storm":  # the connect storm: every path at once
            served, storm_report = await storms.storm_connect(
                lambda path: Follower("127.0.0.1", path, marker, stats), args[0], port
            )
            clients.extend(served)  # type: ignore[arg-type]
            pipe.send(storm_report)
        elif cmd == "progress":
            st = stats.get(args[0])
            pipe.send(st.deliveries if st else 0)
        elif cmd == "report":
            phase, expected = args
            st = stats.pop(phase, None) or PhaseStats()
            lost = sum(max(0, expected - c.counts.get(phase, 0)) for c in clients)
            extra = sum(max(0, c.counts.get(phase, 0) - expected) for c in clients)
            pipe.send({
                "deliveries": st.deliveries, "frames": st.frames, "first": st.first,
                "last": st.last, "latencies": st.latencies_ms.tobytes(), "lost": lost,
                "extra": extra, "out_of_order": sum(c.out_of_order.get(phase, 0) for c in clients),
                "closed": sum(c.closed for c in clients),
                "resyncs": sum(c.resyncs for c in clients),
                "close_codes": sorted({c.close_code for c in clients if c.close_code}),
            })  # fmt: skip
            for c in clients:
                c.resyncs = 0
                c.counts.pop(phase, None)
                c.last.pop(phase, None)
                c.out_of_order.pop(phase, None)
        elif cmd == "cpu":
            t = proc.cpu_times()
            pipe.send(t.user + t.system)
        elif cmd == "close":
            for c in clients:
                c.close()
            await asyncio.sleep(0.2)
            with contextlib.suppress(OSError):
                pipe.send(len(clients))
            return


def client_main(cmd_in: Connection, pipe: Connection, port: int, marker: bytes) -> None:
    """Entry point of one client process: follows sockets as the parent tells it."""
    raise_nofile()
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(_client_loop(cmd_in, pipe, port, marker))


class ClientPool:
    """`count` client processes for one server; each holds a share of the sockets."""

    def __init__(self, name: str, port: int, marker: bytes, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self.cmds: list[Connection] = []  # parent → child
        self.pipes: list[Connection] = []  # child → parent
        self.procs: list[Any] = []
        for i in range(count):
            cmd_in, cmd_out = ctx.Pipe(duplex=False)
            rep_in, rep_out = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=client_main, args=(cmd_in, rep_out, port, marker),
                               name=f"bench-{name}-client-{i}", daemon=True)  # fmt: skip
            proc.start()
            cmd_in.close()
            rep_out.close()
            self.cmds.append(cmd_out)
            self.pipes.append(rep_in)
            self.procs.append(proc)
        self.connected = 0

    def ask(self, msg: tuple[Any, ...], timeout_s: float = 60.0) -> list[Any]:
        for cmd in self.cmds:
            cmd.send(msg)
        out = []
        deadline = time.monotonic() + timeout_s
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"{self.name} client did not answer {msg[0]} in {timeout_s} s")
            out.append(pipe.recv())
        return out

    def connect(self, paths: list[str], concurrency: int = 64) -> dict[str, Any]:
        """Connect `paths` (split over the processes); returns counts and errors."""
        shares = [paths[i :: len(self.pipes)] for i in range(len(self.pipes))]
        for cmd, share in zip(self.cmds, shares, strict=True):
            cmd.send(("connect", share, concurrency))
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(300):
                raise TimeoutError(f"{self.name} clients did not connect in 300 s")
            replies.append(pipe.recv())
        errors: dict[str, int] = {}
        for r in replies:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        self.connected = sum(r["connected"] for r in replies)
        return {"connected": self.connected, "errors": errors}

    def storm(self, paths: list[str]) -> list[dict[str, Any]]:
        """Connect `paths` (split over the processes) all at once; each process's report."""
        shares = [paths[i :: len(self.pipes)] for i in range(len(self.pipes))]
        for cmd, share in zip(self.cmds, shares, strict=True):
            cmd.send(("storm", share))
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(600):
                raise TimeoutError(f"{self.name} clients did not finish the storm in 600 s")
            replies.append(pipe.recv())
        self.connected = sum(r["first_try"] + r["after_retry"] for r in replies)
        return replies

    def progress(self, phase: int) -> int:
        return sum(self.ask(("progress", phase), 10))

    def cpu_s(self) -> float:
        return sum(self.ask(("cpu",), 10))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        """Ask every process to close its sockets and exit; terminate by PID after 10 s."""
        for cmd in self.cmds:
            with contextlib.suppress(OSError):
                cmd.send(("close",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()  # SIGTERM to that PID
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --- seeding and posting -------------------------------------------------------------------


def follower_id(i: int) -> str:
    return f"ff{i:05d}"


def creator_id(target: str, i: int) -> str:
    return f"fc{target[0]}{i:03d}"


async def seed(store: Any, followers: int, creators: int) -> dict[str, list[dict[str, Any]]]:
    """Follower users following every stories creator; the creators of both pools."""
    now = store.clock.now_ms()
    pools = {t: [creator_id(t, i) for i in range(creators)] for t in (STORIES, BASELINE)}
    owners: dict[str, list[dict[str, Any]]] = {}

    async def in_chunks(coros: list[Any], size: int = 50) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(coros), size):
            out += await asyncio.gather(*coros[start : start + size])
        return out

    for target, ids in pools.items():
        owners[target] = await in_chunks(
            [store.users.create(f"bench_{c}", f"Creator {c}", uid=c) for c in ids]
        )
    await in_chunks([store.users.create(f"bench_{follower_id(i)}", f"Follower {i}",
                                        uid=follower_id(i)) for i in range(followers)])  # fmt: skip
    await follow_all(store, [follower_id(i) for i in range(followers)], pools[STORIES], now)
    return owners


async def follow_all(store: Any, viewers: list[str], owners: list[str], now_ms: int) -> None:
    """Every viewer follows every owner: the two ZADDs of `Graph.follow`, batched.

    `Graph.follow` is one round trip per pair (120,000 pairs here); the same keys
    are written in bulk, then `Graph` itself checks a sample.
    """
    k, pipe = store.keys, store.redis.pipeline(transaction=False)
    for n, viewer in enumerate(viewers):
        pipe.zadd(k.following(viewer), dict.fromkeys(owners, now_ms), nx=True)
        if n % 1000 == 999:
            await pipe.execute()
    for owner in owners:
        for start in range(0, len(viewers), 1000):
            pipe.zadd(k.followers(owner), dict.fromkeys(viewers[start : start + 1000], now_ms),
                      nx=True)  # fmt: skip
        await pipe.execute()
    await pipe.execute()
    for viewer in {viewers[0], viewers[-1]}:
        for owner in {owners[0], owners[-1]}:
            assert (await store.graph.relation(viewer, owner)).follows, (viewer, owner)
    assert len(await store.graph.followers(owners[-1])) >= len(viewers)


class Poster:
    """Publishes posts through the server's own `StoryWriter._publish_new` (Lua: HSET, ZADD, PUBLISH)."""

    def __init__(self, store: Any) -> None:
        from server.stories.writer import StoryWriter

        self.store = store
        self.writer = StoryWriter(store)
        self.count = 0

    async def post(self, owner: dict[str, Any], phase: int, idx: int) -> str:
        """Publish one item of `owner` whose caption carries `phase`, `idx` and the time; its id."""
        from server.core.items import ItemRecord

        seq = await self.writer._next_seq(owner["id"])
        now = self.store.clock.now_ms()
        ts = time.time()
        rec = ItemRecord(
            owner=owner["id"], seq=seq, source="upload", kind="image", mime="image/jpeg",
            width=1080, height=1920, duration_ms=None,
            media_key=f"media/{owner['id']}/{seq}-bench.jpg",
            poster_key=f"media/{owner['id']}/{seq}-bench-poster.jpg",
            caption=f"bench {phase} {idx} {ts:.6f}", audience="followers",
            created_ms=now, expires_ms=now + 24 * HOUR_MS,
        )  # fmt: skip
        await self.writer._publish_new(owner, rec)
        self.count += 1
        return str(rec.id)


# --- one phase ------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    pid: int
    pool: ClientPool
    owners: list[dict[str, Any]]
    log: Path
    rotation: int = 0
    log_offset: int = 0

    def new_log_lines(self) -> list[str]:
        """Lines the server logged since the last call (warnings and errors: log level warning)."""
        with contextlib.suppress(OSError), self.log.open("rb") as fh:
            fh.seek(self.log_offset)
            data = fh.read()
            self.log_offset += len(data)
            return [line for line in data.decode(errors="replace").splitlines() if line.strip()]
        return []

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server so far (a group of processes: their sum)."""
        return cpu_s(self.pid)

    def sys_s(self) -> float:
        """Kernel-mode CPU seconds of the server so far."""
        return sys_s(self.pid)


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def sys_s(pid: int) -> float:
    """Kernel-mode CPU seconds of `pid` (socket writes on loopback land here)."""
    return float(psutil.Process(pid).cpu_times().system)


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def percentiles(values_ms: list[float]) -> dict[str, float]:
    values_ms.sort()
    return {
        "p50_ms": round(h.percentile(values_ms, 50), 2),
        "p99_ms": round(h.percentile(values_ms, 99), 2),
        "max_ms": round(values_ms[-1], 2) if values_ms else math.nan,
    }


async def run_phase(
    t: Target, poster: Poster, phase: int, kind: str, rate: float | None, posts: int,
    drain_s: float,
) -> dict[str, Any]:  # fmt: skip
    """Post `posts` (at `rate`/s, or back to back), wait for every delivery; figures."""
    followers = t.pool.connected
    expected = followers * posts
    t.new_log_lines()
    cpu0, sys0, ccpu0 = t.cpu_s(), t.sys_s(), t.pool.cpu_s()
    t0 = time.time()
    start = time.perf_counter()
    for i in range(posts):
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        owner = t.owners[t.rotation % len(t.owners)]
        t.rotation += 1
        await poster.post(owner, phase, i)
    posted_s = time.perf_counter() - start
    deadline = time.perf_counter() + drain_s
    delivered, complete = 0, False
    while time.perf_counter() < deadline:
        delivered = t.pool.progress(phase)
        if delivered >= expected:
            complete = True
            break
        await asyncio.sleep(0.05)
    cpu1, sys1 = t.cpu_s(), t.sys_s()
    wall_s = time.perf_counter() - start
    ccpu1 = t.pool.cpu_s()
    if not complete:  # let the backlog clear (bounded) so the next phase starts clean
        settle_until, before = time.perf_counter() + drain_s, -1
        while time.perf_counter() < settle_until and delivered != before:
            before = delivered
            await asyncio.sleep(1.0)
            delivered = t.pool.progress(phase)
    reports = t.pool.ask(("report", phase, posts), 60)
    log_lines = t.new_log_lines()
    lat: list[float] = []
    for r in reports:
        a = array("f")
        a.frombytes(r["latencies"])
        lat.extend(a)
    got = sum(r["deliveries"] for r in reports)
    frames = sum(r["frames"] for r in reports)
    last = max(r["last"] for r in reports)
    server_cpu = cpu1 - cpu0
    out: dict[str, Any] = {
        "target": t.name, "followers": followers, "phase": kind, "rate": rate, "posts": posts,
        "posting_s": round(posted_s, 3), "expected": expected, "delivered": got,
        "delivered_in_window": delivered if not complete else got,
        "complete_within_drain": complete, "lost": sum(r["lost"] for r in reports),
        "duplicates": sum(r["extra"] for r in reports),
        "out_of_order": sum(r["out_of_order"] for r in reports),
        "sockets_closed": sum(r["closed"] for r in reports),
        "snapshots_resent": sum(r["resyncs"] for r in reports),
        "close_codes": sorted({c for r in reports for c in r["close_codes"]}),
        "ws_messages": frames,
        "deliveries_per_s": round(got / (last - t0), 1) if got and last > t0 else 0.0,
        "offered_per_s": round(followers * rate, 1) if rate else None,
        "wall_s": round(wall_s, 2), "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_delivery": round(server_cpu / got * 1e6, 2) if got else math.nan,
        "server_sys_us_per_delivery": round((sys1 - sys0) / got * 1e6, 2) if got else math.nan,
        "server_cpu_us_per_ws_message": round(server_cpu / frames * 1e6, 2) if frames else math.nan,
        "server_cpu_share": round(server_cpu / wall_s, 2),
        "clients_cpu_us_per_delivery": round((ccpu1 - ccpu0) / got * 1e6, 2) if got else math.nan,
        **percentiles(lat),
        "server_log": log_lines[:20],
        "server_log_lines": len(log_lines),
    }  # fmt: skip
    print(f"  {t.name:8} {followers:5} {kind:9} posts={posts:4} delivered={got}/{expected} "
          f"lost={out['lost']} {out['deliveries_per_s']:>9}/s p50={out['p50_ms']} "
          f"p99={out['p99_ms']} max={out['max_ms']} ms cpu={out['server_cpu_us_per_delivery']}"
          f" us/delivery (sys {out['server_sys_us_per_delivery']}; {out['server_cpu_share']} core) wall={out['wall_s']} s"
          f" resent snapshots={out['snapshots_resent']} log lines={len(log_lines)}",
          flush=True)  # fmt: skip
    await asyncio.sleep(1.0)
    return out


# --- the run ------------------------------------------------------------------------------


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """`py-spy record` on `pid` (raw collapsed stacks into `out`) until SIGINT; None without py-spy."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        print("  (py-spy not installed: pip install py-spy; no profile)", flush=True)
        return None
    return subprocess.Popen([str(exe), "record", "--pid", str(pid), "--duration", "300",
                             "--rate", "200", "--format", "raw", "--nonblocking",
                             "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """SIGINT to py-spy's PID makes it write its output; SIGKILL to that PID if it hangs."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


async def run_storms(
    store: Any, targets: dict[str, Target], ports: dict[str, int], paths: dict[str, list[str]],
    probe_paths: dict[str, str], profile: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Close storm, then connect storm, on each server (see `bench/storms.py`)."""
    probes: dict[str, storms.Probe] = {}
    for name in targets:
        marker = b'"type":"hello"' if name == BASELINE else SNAPSHOT
        probe = await ws_connect(
            lambda n=name, m=marker: storms.Probe(probe_paths[n], m), ports[name]
        )
        assert isinstance(probe, storms.Probe)
        probe.start()
        probes[name] = probe

    async def stories_quiet() -> bool:  # Redis lists no channel of its sockets but the probe's
        chans = await store.redis.pubsub_channels(store.keys.p + "ev:{*")
        return not [c for c in chans if b"{fcb" not in c and PROBE_ID.encode() not in c]

    rows = []
    for name, t in targets.items():
        sockets = t.pool.connected
        row = await storms.close_storm(t, probes[name], stories_quiet if name == STORIES else None)
        rows.append(row)
        print(f"  {name:8} close storm of {sockets}: {row['server_cpu_s']} CPU-s, "
              f"max stall {row['max_stall_ms']} ms, deaf {row['deaf_events']}, "
              f"tracebacks {row['tracebacks']} {row['log_sample']}", flush=True)  # fmt: skip
    for name, t in targets.items():
        size = len(paths[name])  # every socket of the largest size
        out = h.RESULTS_DIR / "fanout-profile-storm-connect.txt"
        spy = _py_spy(t.pid, out) if profile and name == STORIES else None
        row = await storms.connect_storm(t, probes[name], paths[name])
        if spy is not None:
            _stop_py_spy(spy)
        rows.append(row)
        print(f"  {name:8} connect storm of {size}: served {row['first_try']}+{row['after_retry']}"
              f", told to retry {row['told_to_retry']}, failed {row['failures']}, "
              f"{row['cpu_ms_per_socket']} CPU-ms per socket, p99 snapshot "
              f"{row['p99_snapshot_ms']} ms, max stall {row['max_stall_ms']} ms, deaf "
              f"{row['deaf_events']}, tracebacks {row['tracebacks']}", flush=True)  # fmt: skip
    for probe in probes.values():
        probe.stop()
    return rows


PROFILED = {  # function (as py-spy names it) → what it is, for the report
    "Broker._read": "pub/sub reader, incl. the synchronous fan-out (Hub.on_message)",
    "Lifecycle.story_new": "per-follower loop: view, audience check, enqueue",
    "TrayViews.entry_frame": "  tray.update entry per distinct view (visible_items + ring)",
    "Dispatcher.enqueue": "  Dispatcher.enqueue (write at once, or outbox push)",
    "Dispatcher._flush": "flush of the frames queued during one loop iteration (packed)",
    "UvicornWire.send": "  UvicornWire.send (guards + transport.write, incl. the syscall)",
    "Hub.resync_all": "resync after a pub/sub reconnect (snapshot per socket)",
}


def profile_summary(path: Path) -> dict[str, Any]:
    """Inclusive share of samples (%) of the functions in PROFILED, from py-spy's raw output."""
    total, hits = 0, dict.fromkeys(PROFILED, 0)
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            total += int(count)
            names = {frame.split(" (", 1)[0] for frame in stack.split(";")}
            for name in PROFILED:
                if name in names:
                    hits[name] += int(count)
    return {"samples": total,
            "share_pct": {k: round(100 * v / total, 1) if total else 0.0 for k, v in hits.items()}}  # fmt: skip


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from server.core.auth import Authenticator
    from server.core.settings import Settings

    started = time.perf_counter()
    nofile = raise_nofile()
    sizes = sorted(args.followers)
    max_followers = sizes[-1]
    phases = [("steady10", 10.0, int(10 * args.phase_s)), ("steady20", 20.0, int(20 * args.phase_s)),
              ("burst", None, args.burst)]  # fmt: skip
    env = {"STORIES_JWT_SECRET": JWT_SECRET, "STORIES_MEDIA_SECRET": MEDIA_SECRET}
    results: dict[str, Any] = {"phases": [], "idle": []}
    with contextlib.ExitStack() as stack:
        url, prefix, server = stack.enter_context(h.bench_environment(NAME, env))
        m = h.machine(url)
        m["open_files_limit"] = nofile
        tmp = server.data_dir.parent
        store = h.in_process_store(url, prefix, tmp / "in-process")
        t_seed = time.perf_counter()
        owners = await seed(store, max_followers, args.creators)
        seed_s = time.perf_counter() - t_seed
        auth = Authenticator(Settings(jwt_secret=JWT_SECRET, data_dir=str(tmp)))
        now_s = int(time.time())
        tokens = [auth.mint(follower_id(i), now_s) for i in range(max_followers)]
        print(f"seeded {max_followers} followers x {args.creators} creators in {seed_s:.1f} s",
              flush=True)  # fmt: skip

        server.start()
        stack.callback(server.stop)
        baseline = BaselineProcess(
            url,
            [store.keys.stories_channel(o["id"]) for o in owners[BASELINE]],
            tmp / "baseline.log",
        )
        baseline.start()
        stack.callback(baseline.stop)
        floor = BaselineProcess(url, [], tmp / "floor.log", uvicorn_idle=True)
        floor.start()
        stack.callback(floor.stop)
        assert server.proc is not None and baseline.proc is not None and floor.proc is not None
        pools = {
            STORIES: ClientPool(STORIES, server.port, SNAPSHOT, args.clients),
            BASELINE: ClientPool(BASELINE, baseline.port, b'"type":"hello"', args.clients),
            FLOOR: ClientPool(FLOOR, floor.port, SNAPSHOT, args.clients),
        }
        for pool in pools.values():
            stack.callback(pool.close)
        targets = {
            STORIES: Target(
                STORIES,
                server.proc.pid,
                pools[STORIES],
                owners[STORIES],
                server.data_dir / "server.log",
            ),
            BASELINE: Target(
                BASELINE, baseline.proc.pid, pools[BASELINE], owners[BASELINE], baseline.log_path
            ),
        }
        idle_targets = {
            **targets,
            FLOOR: Target(FLOOR, floor.proc.pid, pools[FLOOR], [], floor.log_path),
        }
        paths = {
            STORIES: [f"/ws?token={tok}" for tok in tokens],
            BASELINE: [f"/?n={i}" for i in range(max_followers)],
            FLOOR: ["/ws"] * max_followers,
        }
        poster = Poster(store)
        phase_id = 0
        have = 0
        for size in sizes:
            for name, t in idle_targets.items():
                rss0, cpu0 = rss(t.pid), cpu_s(t.pid)
                t0 = time.perf_counter()
                got = t.pool.connect(paths[name][have:size])
                connect_s = time.perf_counter() - t0
                connect_cpu = cpu_s(t.pid) - cpu0
                await asyncio.sleep(3.0)  # let it go idle
                rss1 = rss(t.pid)
                added = got["connected"] - have
                idle = {
                    "target": name, "followers": got["connected"], "added": added,
                    "connect_s": round(connect_s, 1), "connects_per_s": round(added / connect_s, 1),
                    "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_mib": round(rss1 / 2**20, 1),
                    "kib_per_idle_connection": round((rss1 - rss0) / max(1, added) / 1024, 1),
                    "server_cpu_ms_per_connect": round(connect_cpu / max(1, added) * 1000, 2),
                    "errors": got["errors"], "server_log": t.new_log_lines()[:10],
                }  # fmt: skip
                results["idle"].append(idle)
                print(f"  {name:8} {got['connected']} connected (+{added} in {connect_s:.1f} s); "
                      f"{idle['kib_per_idle_connection']} KiB RSS per idle connection; "
                      f"{idle['server_cpu_ms_per_connect']} ms server CPU per connect; "
                      f"errors {got['errors']}", flush=True)  # fmt: skip
                if got["connected"] != size:
                    raise RuntimeError(f"{name}: only {got['connected']} of {size} connected")
            have = size
            for n, (kind, rate, posts) in enumerate(phases if args.fanout else []):
                order = [STORIES, BASELINE] if n % 2 == 0 else [BASELINE, STORIES]
                for name in order:
                    phase_id += 1
                    spy = None
                    profile = h.RESULTS_DIR / f"fanout-profile-{size}-{kind}.txt"
                    if args.profile and name == STORIES and size == max_followers:
                        spy = _py_spy(targets[name].pid, profile)
                    res = await run_phase(targets[name], poster, phase_id, kind, rate, posts,
                                          args.drain_s)  # fmt: skip
                    if spy is not None:
                        _stop_py_spy(spy)
                        res["profile"] = profile_summary(profile)
                    results["phases"].append(res)
        if args.storms:
            ports = {STORIES: server.port, BASELINE: baseline.port, FLOOR: floor.port}
            probe_paths = {
                STORIES: f"/ws?token={auth.mint(PROBE_ID, now_s)}",
                BASELINE: "/?n=probe",
                FLOOR: "/ws",
            }
            results["storms"] = await run_storms(store, idle_targets, ports, paths, probe_paths,
                                                 args.profile)  # fmt: skip
        await asyncio.sleep(2.0)
        results["server_log_after"] = targets[STORIES].new_log_lines()[:20]
        await store.redis.aclose()
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME,
        "date": h.now_utc(),
        "machine": m,
        "command": "python bench/fanout.py " + " ".join(sys.argv[1:]),
        "config": {
            "followers": sizes,
            "creators": args.creators,
            "client_processes": args.clients,
            "phase_s": args.phase_s,
            "burst_posts": args.burst,
            "drain_s": args.drain_s,
            "posting": "StoryWriter._publish_new (server/store/lua/post_item.lua) from the bench process",
        },
        "seed_s": round(seed_s, 1),
        **results,
        "duration_s": round(time.perf_counter() - started, 1),
    }


# --- the report -----------------------------------------------------------------------------


def _ratio(a: float, b: float, digits: int = 2) -> float:
    return round(a / b, digits) if b else math.nan


def judge(run: dict[str, Any]) -> dict[str, Any]:
    """Ratios to the baseline and the issue's targets, met or not."""
    by = {(p["target"], p["followers"], p["phase"]): p for p in run["phases"]}
    rows = []
    for (target, n, kind), p in by.items():
        b = by.get((BASELINE, n, kind))
        if target != STORIES or b is None:
            continue
        rows.append({
            "followers": n, "phase": kind,
            "rate_ratio": _ratio(p["deliveries_per_s"], b["deliveries_per_s"]),
            "p50_ratio": _ratio(p["p50_ms"], b["p50_ms"]),
            "p99_ratio": _ratio(p["p99_ms"], b["p99_ms"]),
            "cpu_ratio": _ratio(p["server_cpu_us_per_delivery"], b["server_cpu_us_per_delivery"]),
            "lost": p["lost"], "baseline_lost": b["lost"],
        })  # fmt: skip
    biggest = max(i["followers"] for i in run["idle"])
    big = [r for r in rows if r["followers"] == biggest]
    steady10 = next((r for r in big if r["phase"] == "steady10"), None)
    sat = [r for r in big if r["phase"] in ("steady20", "burst")]
    idle = {i["followers"]: i for i in run["idle"] if i["target"] == STORIES}
    floor = {i["followers"]: i for i in run["idle"] if i["target"] == FLOOR}
    cpu = [r["cpu_ratio"] for r in rows]
    targets = {
        "zero_lost": {
            "value": {f"{r['followers']}/{r['phase']}": r["lost"] for r in rows},
            "met": all(r["lost"] == 0 for r in rows),
        },
        "p99_10ps": {
            "followers": biggest, "value": steady10["p99_ratio"] if steady10 else None,
            "limit": TARGET_P99_RATIO,
            "met": bool(steady10) and steady10["p99_ratio"] <= TARGET_P99_RATIO,
        },
        "rate_at_saturation": {
            "followers": biggest, "value": {r["phase"]: r["rate_ratio"] for r in sat},
            "limit": TARGET_RATE_RATIO,
            "met": bool(sat) and all(r["rate_ratio"] >= TARGET_RATE_RATIO for r in sat),
        },
        "cpu_per_delivery": {
            "value": {f"{r['followers']}/{r['phase']}": r["cpu_ratio"] for r in rows},
            "range": [min(cpu, default=math.nan), max(cpu, default=math.nan)],
            "limit": TARGET_CPU_RATIO,
            "met": all(c <= TARGET_CPU_RATIO for c in cpu),
        },
        "idle_connection_kib": {
            "value": {n: i["kib_per_idle_connection"] for n, i in idle.items()},
            "framework_floor": {n: i["kib_per_idle_connection"] for n, i in floor.items()},
            "limit_over_floor": TARGET_IDLE_OVER_FLOOR_KIB,
            "met": all(i["kib_per_idle_connection"] <= floor[n]["kib_per_idle_connection"]
                       + TARGET_IDLE_OVER_FLOOR_KIB for n, i in idle.items() if n in floor),
        },
        **judge_storms(run.get("storms", []), idle.get(biggest)),
    }  # fmt: skip
    return {"rows": rows, "targets": targets}


def judge_storms(rows: list[dict[str, Any]], idle: dict[str, Any] | None) -> dict[str, Any]:
    """The storm targets: no deaf event, no traceback, nobody dropped; sign-in CPU."""
    ours = [r for r in rows if r["target"] == STORIES]
    if not ours:
        return {}
    connect = next((r for r in ours if r["storm"] == "connect"), None)
    sign_in = {"storm": connect["cpu_ms_per_socket"] if connect else None,
               "normal connect": idle["server_cpu_ms_per_connect"] if idle else None}  # fmt: skip
    return {
        "storms_clean": {
            "value": {r["storm"]: {"deaf": r["deaf_events"], "tracebacks": r["tracebacks"],
                                   "failed": sum(r.get("failures", {}).values())} for r in ours},
            "met": all(r["deaf_events"] == 0 and r["tracebacks"] == 0
                       and not r.get("failures") for r in ours),
        },
        "sign_in_cpu_ms": {
            "value": sign_in, "limit": TARGET_SIGN_IN_CPU_MS,
            "met": all(v is not None and v <= TARGET_SIGN_IN_CPU_MS for v in sign_in.values()),
        },
    }  # fmt: skip


def _met(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def _bound(p: dict[str, Any]) -> str:
    """What held a phase back: nothing, the server's one core, or the rest of the machine."""
    offered = p["offered_per_s"]
    if offered and p["deliveries_per_s"] >= 0.95 * offered and p["p99_ms"] < 500:
        return "kept up"
    if p["server_cpu_share"] >= 0.8:
        return "server CPU"
    return "clients / machine"


def report(run: dict[str, Any]) -> str:
    m, cfg, j = run["machine"], run["config"], run["judged"]
    t = j["targets"]
    name = {"steady10": "10 posts/s", "steady20": "20 posts/s",
            "burst": f"burst of {cfg['burst_posts']}"}  # fmt: skip
    phase_table = h.table(
        ["followers", "phase", "server", "delivered", "lost", "offered/s", "delivered/s",
         "p50 ms", "p99 ms", "max ms", "server CPU µs/delivery", "server CPU (cores)",
         "clients CPU µs/delivery", "WS messages", "held back by"],
        [[p["followers"], name[p["phase"]], p["target"], f"{p['delivered']}/{p['expected']}",
          p["lost"], p["offered_per_s"] or "-", p["deliveries_per_s"], p["p50_ms"], p["p99_ms"],
          p["max_ms"], p["server_cpu_us_per_delivery"], p["server_cpu_share"],
          p["clients_cpu_us_per_delivery"], p["ws_messages"], _bound(p)]
         for p in run["phases"]],
    )  # fmt: skip
    ratio_table = h.table(
        ["followers", "phase", "delivered/s ÷ baseline", "p50 ÷ baseline", "p99 ÷ baseline",
         "server CPU per delivery ÷ baseline"],
        [[r["followers"], name[r["phase"]], r["rate_ratio"], r["p50_ratio"], r["p99_ratio"],
          r["cpu_ratio"]] for r in j["rows"]],
    )  # fmt: skip
    idle_table = h.table(
        ["server", "sockets", "added", "connect s", "connects/s", "RSS before MiB",
         "RSS after MiB", "KiB per idle connection", "server CPU ms per connect",
         "connect errors (retried)"],
        [[i["target"], i["followers"], i["added"], i["connect_s"], i["connects_per_s"],
          i["rss_before_mib"], i["rss_after_mib"], i["kib_per_idle_connection"],
          i.get("server_cpu_ms_per_connect", "-"), sum(i["errors"].values())]
         for i in run["idle"]],
    )  # fmt: skip
    profiled = [p for p in run["phases"] if p.get("profile", {}).get("samples")]
    profile_md = ""
    if profiled:
        prof_table = h.table(
            ["function (inclusive)", "what", *(f"{name[p['phase']]}" for p in profiled)],
            [[f"`{fn.strip()}`", what.strip(), *(p["profile"]["share_pct"][fn] for p in profiled)]
             for fn, what in PROFILED.items()],
        )  # fmt: skip
        profile_md = f"""
Where the stories server's time goes at {profiled[0]["followers"]} followers
(py-spy, {", ".join(str(p["profile"]["samples"]) for p in profiled)} samples at 200 Hz;
% of samples with the function on the stack):

{prof_table}
"""
    incidents = []
    for p in run["phases"]:
        deaf = [line for line in p.get("server_log", []) if "deaf" in line]
        if deaf or p.get("snapshots_resent"):
            incidents.append(
                f"- {p['followers']} followers, {name[p['phase']]}, {p['target']}: "
                + "; ".join(deaf or ["no log line"])
                + f"; {p.get('snapshots_resent', 0)} fresh `tray.snapshot` frames arrived"
            )
    for i in run["idle"]:
        if i["errors"]:
            errs = [line for line in i.get("server_log", []) if "redis" in line.lower()]
            incidents.append(
                f"- connecting {i['added']} sockets to {i['target']}: "
                f"{sum(i['errors'].values())} dropped before their snapshot and retried "
                f"({'; '.join(errs[:1]) or 'no log line'})"
            )
    if run.get("server_log_after"):
        incidents.append("- logged after the last phase: " + "; ".join(run["server_log_after"][:3]))
    deaf_note = (
        '\nA "deaf" verdict comes from the broker\'s canary (`server/push/broker.py`): its own '
        "message, published every second, was not read back within 3 s because the event "
        "loop was busy fanning out the backlog, so the pub/sub connection was torn down and "
        "rebuilt; whatever was still queued on it is dropped, and `Hub.resync_all` then "
        "sends every socket a fresh snapshot, one socket after another.\n"
        if any("deaf" in line for p in run["phases"] for line in p.get("server_log", []))
        or any("deaf" in line for line in run.get("server_log_after", []))
        else ""
    )
    incidents_md = (
        "\nIncidents in this run (server log at level warning, and what the clients saw):\n\n"
        + "\n".join(incidents) + "\n" + deaf_note
        if incidents else "\nNo incidents: the server logged no warning and resent no snapshot.\n"
    )  # fmt: skip
    idle = t["idle_connection_kib"]
    hub_extra = {n: round(v - idle["framework_floor"].get(n, math.nan), 1)
                 for n, v in idle["value"].items()}  # fmt: skip
    sat = ", ".join(f"{name[k]} {v}x" for k, v in t["rate_at_saturation"]["value"].items())
    lost_total = sum(t["zero_lost"]["value"].values())
    big = t["p99_10ps"]["followers"]
    storm_targets, storm_md = "", ""
    if "storms_clean" in t:
        clean, cpu = t["storms_clean"], t["sign_in_cpu_ms"]
        storm_targets = (
            f"- close and connect storms of {big:,} sockets with no deaf event, no traceback, "
            f"every socket served or told to retry: {_met(clean['met'])} ({clean['value']});\n"
            f"- sign-in ≤ {TARGET_SIGN_IN_CPU_MS:g} ms of server CPU per socket: "
            f"{_met(cpu['met'])} ({', '.join(f'{k} {v} ms' for k, v in cpu['value'].items())}).\n"
        )
        storm_md = f"""
Storms at {big:,} sockets (`bench/storms.py`): every socket closes at once, then
every socket connects at once. "Max loop stall" is the longest ping→pong of a
probe socket pinging every 20 ms; a socket is told to retry by a 1013 close with
`{{"retry_after_ms": n}}`, and then waits n ms and tries again (up to
{storms.MAX_TRIES} tries); "first answer" is the snapshot or that 1013, whichever
came; "to snapshot" counts from the storm's start, waits included. `uvicorn-idle`
is the bare ASGI app on uvicorn (accept, one frame): the stall and CPU uvicorn
itself takes for the same storm.

{storms.storm_table(run["storms"])}
"""
    return f"""## Fan-out: `story.new` to 1,000 and 5,000 followers over `/ws`

Run {run["date"]} on {h.machine_line(m)}. Command: `{run["command"].strip()}`
(about {round(run["duration_s"])} s).

**Stories** is `python -m server serve` (one uvicorn worker, sans-I/O websockets,
uvloop); every socket is a real follower (a user seeded with `UserStore` and
`Graph`, a JWT minted with the server's secret). **Baseline** is
`bench/baseline_ws.py`: the `websockets` library's asyncio server relaying each
Redis message with `websockets.broadcast()`. Both run at once, each with its own
sockets held by {cfg["client_processes"]} client processes (a minimal RFC 6455
client on uvloop, no task per message), and take turns phase by phase. A post is
the exact `story.new` bus event of a real post: `StoryWriter._publish_new` (the
server's Lua script records, indexes and publishes the item) called from the
benchmark; the media processing of `POST /api/v1/stories` is left out, so its CPU
is not charged to the fan-out. Posts rotate over {cfg["creators"]} creators whom
every follower follows, so each keeps a few dozen active items at most; the
baseline relays the same bytes from its own creators' channels. Latency: from
the wall-clock time in the caption (taken just before the publish) to the bytes'
arrival at the client, same machine, same clock. A delivery is one `story.new`
reaching one follower; the stories server also sends a `tray.update` with each,
packed into one WS message with it (and with more when a backlog exists). Server
CPU: user+system time of the server's PID over the phase (psutil). Steady phases
last {cfg["phase_s"]} s; a phase ends when every delivery arrived, or
{cfg["drain_s"]} s after the last post. Everything shares 2 vCPUs (server,
{cfg["client_processes"]} client processes, Redis, and other tenants' work), so
phases marked "clients / machine" show the machine's limit, not the server's.

**Targets** (at {big:,} followers where not said):
- zero lost events in every phase: {_met(t["zero_lost"]["met"])} ({lost_total} lost in all);
- p99 at 10 posts/s ≤ {TARGET_P99_RATIO}x the baseline's: {_met(t["p99_10ps"]["met"])} ({t["p99_10ps"]["value"]}x);
- delivered/s at saturation ≥ {TARGET_RATE_RATIO}x the baseline's: {_met(t["rate_at_saturation"]["met"])} ({sat});
- server CPU per delivered event ≤ {TARGET_CPU_RATIO}x the baseline's: {_met(t["cpu_per_delivery"]["met"])} ({t["cpu_per_delivery"]["range"][0]}x to {t["cpu_per_delivery"]["range"][1]}x over all phases);
- idle connection ≤ the bare uvicorn floor (`uvicorn-idle`, same run) + {TARGET_IDLE_OVER_FLOOR_KIB:g} KiB of server RSS: {_met(idle["met"])} ({", ".join(f"{v} KiB at {int(k):,}" for k, v in idle["value"].items())}; the floor is {", ".join(f"{v} KiB" for v in idle["framework_floor"].values())}, so the stories server's own state adds {", ".join(f"{v} KiB" for v in hub_extra.values())});
{storm_targets}
{phase_table}

Ratios, stories server ÷ baseline, same run:

{ratio_table}
{profile_md}{incidents_md}{storm_md}
Connecting and idle memory: RSS growth of the server process per socket, 3 s
after the last connect. Each stories socket follows the {cfg["creators"]}
creators; `uvicorn-idle` is the smallest ASGI `/ws` app on uvicorn's sans-I/O
WebSocket protocol (`bench/baseline_ws.py --uvicorn-idle`), the server stack's
floor (the stories server's `/ws` skips Starlette's routing and middleware too):

{idle_table}
"""


def main() -> int:
    p = argparse.ArgumentParser(description="WebSocket fan-out benchmark (see module docstring)")
    p.add_argument("--followers", default="1000,5000",
                   type=lambda s: [int(x) for x in s.split(",") if x])  # fmt: skip
    p.add_argument("--clients", type=int, default=3, help="client processes per server")
    p.add_argument("--creators", type=int, default=24, help="creators posts rotate over")
    p.add_argument("--phase-s", type=float, default=8.0, help="length of each steady phase")
    p.add_argument("--burst", type=int, default=50, help="posts in the burst")
    p.add_argument("--drain-s", type=float, default=30.0, help="wait for deliveries after a phase")
    p.add_argument("--profile", action="store_true", help="py-spy the stories server (largest N)")
    p.add_argument("--no-fanout", dest="fanout", action="store_false",
                   help="skip the fan-out phases (idle memory and storms only)")  # fmt: skip
    p.add_argument("--no-storms", dest="storms", action="store_false",
                   help="skip the close and connect storms")  # fmt: skip
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="re-render bench/results/fanout.json")
    drain = p.add_argument_group(
        "drain phase (bench/fanout_drain.py): SIGTERM with reconnecting clients"
    )
    drain.add_argument("--drain", action="store_true", help="run only the drain phase")
    drain.add_argument("--drain-sockets", type=int, default=5000)
    drain.add_argument("--drain-timeout-s", type=float, default=10.0, help="ws_drain_timeout_s")
    drain.add_argument(
        "--drain-deaf", type=int, default=50, help="sockets that never answer a close"
    )
    drain.add_argument("--drain-runs", default="still,obedient,deaf", type=lambda s: s.split(","))
    before = p.add_argument_group("before/after (bench/fanout_before.py): this tree vs a git ref")
    before.add_argument("--before", metavar="REF", help="compare CPU per delivery with REF")
    before.add_argument("--rounds", type=int, default=3, help="alternating rounds per phase")
    args = p.parse_args()
    if args.before:
        from bench.fanout_before import run_cli as before_cli

        return before_cli(args)
    if args.drain:
        from bench.fanout_drain import run_cli

        return run_cli(args)
    if args.report_only:
        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
    else:
        run = asyncio.run(main_async(args))
        run["judged"] = judge(run)
        print(f"results: {h.write_results(NAME, run)}")
    return h.publish(NAME, report(run), args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
