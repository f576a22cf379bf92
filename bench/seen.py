"""Seen benchmark: viewers mark an item seen at rising rates; the owner watches the count.

`python bench/seen.py` starts an embedded Redis, the stories server
(`python -m server serve`) and the baseline relay (`bench/baseline_ws.py`,
subscribed to the owners' inbox channels), seeds one owner per phase with one
item (posted through the server's own `StoryWriter._publish_new`) and, per
phase, a fresh set of viewer users who follow that owner (`UserStore`, `Graph`;
tokens minted with the server's `jwt_secret`). The owner is connected to `/ws`.

Per phase, every viewer sends one `POST /api/v1/stories/{id}/seen` (keep-alive
HTTP/1.1 connections, open loop at 50, 200 and 500 per second, then closed loop
as fast as 32 connections go), so every request adds one view. Measured: seen
events per second sustained, request latency (from its scheduled time, so
queueing counts), server CPU per seen event, the owner's `story.viewed` and
coalesced `story.view_count` frames (rate per item by their server `ts`, and
the last count), and afterwards the owner's `GET /api/v1/stories/{id}`
`view_count` and `/viewers` `count`, which must equal the number of viewers.

Baselines in the same run: the relay gets the same `story.viewed` bus events
from Redis and pushes each unchanged to one socket (push latency from the
event's `seen_at`), and `GET /healthz` on the stories server at the same rate
(one trip through the HTTP stack, no auth, no Redis), just before each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402

from bench import harness as h  # noqa: E402
from bench.baseline_ws import BaselineProcess, raise_nofile  # noqa: E402
from bench.fanout import JWT_SECRET, MEDIA_SECRET, Poster, WSClient, cpu_s, ws_connect  # noqa: E402

NAME = "seen"
RATES: tuple[int | None, ...] = (50, 200, 500, None)  # None: closed loop, as fast as it goes
IDLE_S = 3.0  # measure the idle server's CPU this long, subtracted from every phase
MAX_VIEW_COUNT_PER_S = 4  # PROTOCOL.md: story.view_count at most 4 a second per item
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def ms(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp() * 1000


# --- clients ------------------------------------------------------------------------------


class HttpConn:
    """One keep-alive HTTP/1.1 connection with a hand-written request: cheap for the client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConn:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self, method: str, path: str, token: str | None = None) -> int:
        assert self.reader is not None and self.writer is not None
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        m = CONTENT_LENGTH.search(head)
        if m and int(m[1]):
            await self.reader.readexactly(int(m[1]))
        return int(head[9:12])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)  # from the scheduled time
    service_s: list[float] = field(default_factory=list)  # from the send
    statuses: dict[int, int] = field(default_factory=dict)
    first_at: float = math.inf
    last_done: float = 0.0
    ok: int = 0


async def drive(
    conns: list[HttpConn], jobs: list[tuple[str, str, str | None]], rate: float | None,
    max_s: float, expect: int,
) -> LoadResult:  # fmt: skip
    """Run `jobs` (method, path, token): open loop at `rate`/s, or closed loop when None.

    Stops taking new jobs after `max_s`; in-flight requests are waited for.
    """
    res = LoadResult()
    start = time.perf_counter() + 0.05
    stop_at = start + max_s
    next_job = 0

    async def worker(conn: HttpConn) -> None:
        nonlocal next_job
        while next_job < len(jobs) and time.perf_counter() < stop_at:
            i = next_job
            next_job += 1
            at = start + i / rate if rate else time.perf_counter()
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            res.first_at = min(res.first_at, at)
            status = await conn.request(*jobs[i])
            done = time.perf_counter()
            res.latencies_s.append(done - at)
            res.service_s.append(done - sent)
            res.statuses[status] = res.statuses.get(status, 0) + 1
            res.ok += status == expect
            res.last_done = max(res.last_done, done)

    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in conns)), max_s + 120)
    return res


class OwnerSocket(WSClient):
    """The owner's socket (or the baseline's): every story.viewed / story.view_count frame."""

    def __init__(self, path: str, marker: str) -> None:
        super().__init__("127.0.0.1", path)
        self.marker = marker
        self.viewed: dict[str, list[tuple[float, float, int]]] = {}  # item → (recv, seen_at, count)
        self.counts: dict[str, list[tuple[float, float, int]]] = {}  # item → (ts, recv, count)

    def on_text(self, payload: bytes, now: float) -> None:
        data = orjson.loads(payload)
        for event in data if isinstance(data, list) else [data]:
            kind = event.get("type")
            if not self.ready.done():
                if kind == self.marker:
                    self.ready.set_result(True)
                continue
            if kind == "story.viewed":
                self.viewed.setdefault(event["item_id"], []).append(
                    (now * 1000, ms(event["seen_at"]), event["view_count"])
                )
            elif kind == "story.view_count":
                self.counts.setdefault(event["item_id"], []).append(
                    (ms(event["ts"]), now * 1000, event["view_count"])
                )


def max_per_window(times_ms: list[float], window_ms: float = 1000.0) -> int:
    """The most events in any half-open window [t, t + window) starting at an event."""
    times = sorted(times_ms)
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window_ms:
            j += 1
        best = max(best, j - i)
    return best


def pct(values: list[float], q: float) -> float:
    return round(h.percentile(sorted(values), q), 2) if values else math.nan


# --- seeding ------------------------------------------------------------------------------


def owner_id(n: int) -> str:
    return f"so{n}"


def viewer_id(n: int, i: int) -> str:
    return f"sv{n}x{i:05d}"


async def seed(store: Any, counts: list[int]) -> list[dict[str, Any]]:
    """One owner per phase with its viewers following it; returns the owners."""
    now = store.clock.now_ms()

    async def in_chunks(coros: list[Any], size: int = 50) -> None:
        for start in range(0, len(coros), size):
            await asyncio.gather(*coros[start : start + size])

    owners = [
        await store.users.create(f"bench_{owner_id(n)}", f"Owner {n}", uid=owner_id(n))
        for n in range(len(counts))
    ]
    pairs = [(n, i) for n, count in enumerate(counts) for i in range(count)]
    await in_chunks([store.users.create(f"bench_{viewer_id(n, i)}", None, uid=viewer_id(n, i))
                     for n, i in pairs])  # fmt: skip
    await in_chunks([store.graph.follow(viewer_id(n, i), owner_id(n), now) for n, i in pairs])
    return owners


# --- the run ------------------------------------------------------------------------------

ROUND_TRIP_VIEWERS = 10


async def round_trips(store: Any, n: int, item: str) -> dict[str, Any]:
    """Redis round trips and commands of one `SeenBook.mark_seen`, counted in-process.

    Viewers of an extra owner (`n`) mark its item seen through the server's own
    `SeenBook` on a client whose sends are counted (harness.count_redis).
    """
    from server.stories.reader import StoryReader
    from server.stories.seen import SeenBook

    book = SeenBook(store, StoryReader(store))
    tallies = []
    for i in range(ROUND_TRIP_VIEWERS):
        viewer = await store.users.get(viewer_id(n, i))
        with h.count_redis() as tally:
            await book.mark_seen(viewer, item)
        tallies.append(tally)
    last = tallies[-1]
    return {
        "round_trips": last.round_trips,
        "commands": dict(sorted(last.commands.items())),
        "same_for_all": all(t.round_trips == last.round_trips for t in tallies),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from server.core.auth import Authenticator
    from server.core.settings import Settings

    started = time.perf_counter()
    raise_nofile()
    rates: list[int | None] = [*args.rates, None] if args.closed_loop else list(args.rates)
    counts = [int(r * args.phase_s) if r else args.closed_loop_viewers for r in rates]
    env = {"STORIES_JWT_SECRET": JWT_SECRET, "STORIES_MEDIA_SECRET": MEDIA_SECRET}
    phases: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        url, prefix, server = stack.enter_context(h.bench_environment(NAME, env))
        m = h.machine(url)
        tmp = server.data_dir.parent
        store = h.in_process_store(url, prefix, tmp / "in-process")
        t0 = time.perf_counter()
        owners = await seed(store, [*counts, ROUND_TRIP_VIEWERS])
        poster = Poster(store)
        items = [await poster.post(o, 0, n) for n, o in enumerate(owners)]
        trips = await round_trips(store, len(counts), items[-1])
        print(f"in-process SeenBook.mark_seen: {trips['round_trips']} Redis round trips, "
              f"commands {trips['commands']}", flush=True)  # fmt: skip
        owners, items = owners[:-1], items[:-1]
        auth = Authenticator(Settings(jwt_secret=JWT_SECRET, data_dir=str(tmp)))
        now_s = int(time.time())
        owner_tokens = [auth.mint(o["id"], now_s) for o in owners]
        print(f"seeded {len(owners)} owners, {sum(counts)} viewers in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip

        server.start()
        stack.callback(server.stop)
        baseline = BaselineProcess(
            url, [store.keys.inbox_channel(o["id"]) for o in owners], tmp / "baseline.log"
        )
        baseline.start()
        stack.callback(baseline.stop)
        assert server.proc is not None and baseline.proc is not None
        owner_socks: list[OwnerSocket] = []
        for tok in owner_tokens:
            sock = await ws_connect(lambda tok=tok: OwnerSocket(f"/ws?token={tok}", "tray.snapshot"),
                                    server.port)  # fmt: skip
            owner_socks.append(sock)  # type: ignore[arg-type]
        relay = await ws_connect(lambda: OwnerSocket("/", "hello"), baseline.port)
        assert isinstance(relay, OwnerSocket)
        conns = [await HttpConn(server.port).open() for _ in range(args.connections)]
        c0, w0 = cpu_s(server.proc.pid), time.perf_counter()
        await asyncio.sleep(IDLE_S)  # the server's own background work (sweeper, canary, pings)
        idle_cpu_per_s = (cpu_s(server.proc.pid) - c0) / (time.perf_counter() - w0)
        print(f"idle server: {idle_cpu_per_s * 1000:.1f} ms CPU per second", flush=True)
        try:
            for n, (rate, count) in enumerate(zip(rates, counts, strict=True)):
                phases.append(await run_phase(args, n, rate, count, items[n], owners[n],
                                              owner_tokens[n], owner_socks[n], relay, conns,
                                              server, baseline, auth, now_s,
                                              idle_cpu_per_s))  # fmt: skip
        finally:
            for c in conns:
                await c.close()
            for s in [*owner_socks, relay]:
                s.close()
            await store.redis.aclose()
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME,
        "date": h.now_utc(),
        "machine": m,
        "command": "python bench/seen.py " + " ".join(sys.argv[1:]),
        "config": {
            "rates": rates,
            "phase_s": args.phase_s,
            "connections": args.connections,
            "closed_loop_viewers": args.closed_loop_viewers,
            "method": "HTTP POST /api/v1/stories/{id}/seen, one per viewer",
        },
        "mark_seen_redis": trips,
        "phases": phases,
        "duration_s": round(time.perf_counter() - started, 1),
    }


async def run_phase(
    args: argparse.Namespace, n: int, rate: int | None, count: int, item: str,
    owner: dict[str, Any], owner_token: str, sock: OwnerSocket, relay: OwnerSocket,
    conns: list[HttpConn], server: h.ServerProcess, baseline: BaselineProcess, auth: Any,
    now_s: int, idle_cpu_per_s: float,
) -> dict[str, Any]:  # fmt: skip
    assert server.proc is not None and baseline.proc is not None
    label = f"{rate}/s" if rate else f"closed loop, {len(conns)} connections"
    # the HTTP floor at the same rate: GET /healthz
    floor_n = int(rate * args.phase_s / 2) if rate else 10**6  # closed loop: until max_s
    c0 = cpu_s(server.proc.pid)
    w0 = time.perf_counter()
    floor = await drive(conns, [("GET", "/healthz", None)] * floor_n, rate, args.phase_s / 2, 200)
    floor_cpu = cpu_s(server.proc.pid) - c0 - idle_cpu_per_s * (time.perf_counter() - w0)
    await asyncio.sleep(0.5)
    # the seen phase
    tokens = [auth.mint(viewer_id(n, i), now_s) for i in range(count)]
    jobs = [("POST", f"/api/v1/stories/{item}/seen", tok) for tok in tokens]
    c0, b0, w0 = cpu_s(server.proc.pid), cpu_s(baseline.proc.pid), time.perf_counter()
    res = await drive(conns, jobs, rate, args.phase_s, 204)
    window_s = time.perf_counter() - w0
    raw_cpu = cpu_s(server.proc.pid) - c0
    server_cpu = raw_cpu - idle_cpu_per_s * window_s
    await asyncio.sleep(1.5)  # the last coalesced view count is due within 250 ms
    baseline_cpu = cpu_s(baseline.proc.pid) - b0
    async with httpx.AsyncClient(
        base_url=f"{server.base_url}/api/v1", timeout=30,
        headers={"Authorization": f"Bearer {owner_token}"},
    ) as http:  # fmt: skip
        story = (await http.get(f"/stories/{item}")).json()
        viewers = (await http.get(f"/stories/{item}/viewers", params={"limit": 1})).json()
    viewed = sock.viewed.get(item, [])
    counts = sock.counts.get(item, [])
    relayed = relay.viewed.get(item, [])
    ts = [c[0] for c in counts]
    span_s = (max(ts) - min(ts)) / 1000 if len(ts) > 1 else 0.0
    gaps = [b - a for a, b in zip(sorted(ts), sorted(ts)[1:], strict=False)]
    elapsed = res.last_done - res.first_at if res.ok else 0.0
    final = counts[-1][2] if counts else None
    out = {
        "rate": rate, "label": label, "viewers": count, "sent": sum(res.statuses.values()),
        "ok": res.ok, "statuses": {str(k): v for k, v in res.statuses.items()},
        "seen_per_s": round(res.ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct([x * 1000 for x in res.latencies_s], 50),
        "p99_ms": pct([x * 1000 for x in res.latencies_s], 99),
        "max_ms": round(max(res.latencies_s) * 1000, 2) if res.latencies_s else math.nan,
        "service_p50_ms": pct([x * 1000 for x in res.service_s], 50),
        "server_cpu_us_per_seen": round(server_cpu / res.ok * 1e6, 1) if res.ok else math.nan,
        "server_cpu_share": round(raw_cpu / window_s, 2),
        "server_cpu_raw_s": round(raw_cpu, 3), "server_idle_cpu_per_s": round(idle_cpu_per_s, 4),
        "api_view_count": story.get("view_count"), "api_viewers_count": viewers.get("count"),
        "owner_story_viewed": len(viewed),
        "owner_viewed_push_p50_ms": pct([a - b for a, b, _ in viewed], 50),
        "owner_viewed_push_p99_ms": pct([a - b for a, b, _ in viewed], 99),
        "view_count_frames": len(counts), "view_count_last": final,
        "view_count_max_per_1s": max_per_window(ts),
        "view_count_mean_per_s": round((len(ts) - 1) / span_s, 2) if span_s else None,
        "view_count_min_gap_ms": round(min(gaps), 1) if gaps else None,
        "baseline_relayed": len(relayed),
        "baseline_push_p50_ms": pct([a - b for a, b, _ in relayed], 50),
        "baseline_push_p99_ms": pct([a - b for a, b, _ in relayed], 99),
        "baseline_cpu_us_per_event": round(baseline_cpu / len(relayed) * 1e6, 1)
        if relayed else math.nan,
        "healthz": {
            "n": floor.ok, "per_s": round(floor.ok / (floor.last_done - floor.first_at), 1)
            if floor.ok else 0.0,
            "p50_ms": pct([x * 1000 for x in floor.latencies_s], 50),
            "p99_ms": pct([x * 1000 for x in floor.latencies_s], 99),
            "server_cpu_us_per_request": round(floor_cpu / floor.ok * 1e6, 1)
            if floor.ok else math.nan,
        },
    }  # fmt: skip
    out["exact"] = (
        out["api_view_count"] == out["api_viewers_count"] == res.ok == final == len(viewed)
    )
    print(f"  {label:28} {res.ok}/{count} ok {out['seen_per_s']:>7}/s p50={out['p50_ms']} "
          f"p99={out['p99_ms']} ms cpu={out['server_cpu_us_per_seen']} us/seen "
          f"({out['server_cpu_share']} core); count api={out['api_view_count']} "
          f"viewers={out['api_viewers_count']} last frame={final} viewed={len(viewed)} "
          f"relayed={len(relayed)}; view_count frames={len(counts)} "
          f"max/1s={out['view_count_max_per_1s']}; healthz p50={out['healthz']['p50_ms']} "
          f"p99={out['healthz']['p99_ms']}", flush=True)  # fmt: skip
    return out


# --- the report ------------------------------------------------------------------------------


def report(run: dict[str, Any]) -> str:
    m, cfg, ph, trips = run["machine"], run["config"], run["phases"], run["mark_seen_redis"]
    exact = all(p["exact"] for p in ph)
    coalesced = all(p["view_count_max_per_1s"] <= MAX_VIEW_COUNT_PER_S for p in ph)
    open_loop = [p for p in ph if p["rate"]]
    kept_up = [p for p in open_loop if p["seen_per_s"] >= 0.95 * p["rate"]]
    best = max(ph, key=lambda p: p["seen_per_s"])
    rows = [
        [p["label"], f"{p['ok']}/{p['viewers']}", p["seen_per_s"], p["p50_ms"], p["p99_ms"],
         p["max_ms"], p["server_cpu_us_per_seen"], p["server_cpu_share"],
         p["healthz"]["p50_ms"], p["healthz"]["p99_ms"], p["healthz"]["server_cpu_us_per_request"],
         _ratio(p["p50_ms"], p["healthz"]["p50_ms"]),
         _ratio(p["server_cpu_us_per_seen"], p["healthz"]["server_cpu_us_per_request"])]
        for p in ph
    ]  # fmt: skip
    load = h.table(
        ["load", "204s / viewers", "seen/s", "p50 ms", "p99 ms", "max ms",
         "server CPU µs/seen", "server CPU (cores)", "healthz p50 ms", "healthz p99 ms",
         "healthz CPU µs/req", "p50 ÷ healthz", "CPU ÷ healthz"], rows)  # fmt: skip
    owner = h.table(
        ["load", "API view_count", "/viewers count", "story.viewed to owner",
         "last story.view_count", "exact", "view_count frames", "max in any 1 s",
         "mean /s", "min gap ms", "push p50 ms", "push p99 ms", "relay: relayed",
         "relay push p50 ms", "relay push p99 ms"],
        [[p["label"], p["api_view_count"], p["api_viewers_count"], p["owner_story_viewed"],
          p["view_count_last"], "yes" if p["exact"] else "**no**", p["view_count_frames"],
          p["view_count_max_per_1s"], p["view_count_mean_per_s"], p["view_count_min_gap_ms"],
          p["owner_viewed_push_p50_ms"], p["owner_viewed_push_p99_ms"], p["baseline_relayed"],
          p["baseline_push_p50_ms"], p["baseline_push_p99_ms"]]
         for p in ph],
    )  # fmt: skip
    kept = ", ".join(str(p["rate"]) for p in kept_up) or "none"
    return f"""## Seen: `POST /api/v1/stories/{{id}}/seen` at rising rates, the owner watching

Run {run["date"]} on {h.machine_line(m)}. Command: `{run["command"].strip()}`
(about {round(run["duration_s"])} s).

One owner per phase has one item (posted through `StoryWriter._publish_new`) and
is connected to `/ws`; a fresh set of viewers who follow the owner each send one
`POST /api/v1/stories/{{id}}/seen` (JWT auth) over {cfg["connections"]} keep-alive
HTTP/1.1 connections, open loop at each rate for {cfg["phase_s"]} s (latency counts
from the scheduled time, so queueing shows), then closed loop as fast as the
connections go. The stories server is `python -m server serve`, one uvicorn
worker. Server CPU per seen event is psutil user+system time of its PID over the
phase, less what the idle server burns (sweeper, canary, pings:
{ph[0]["server_idle_cpu_per_s"] * 1000:.1f} ms per second, measured before the
phases). Baselines in the same run: `GET /healthz` on the same server at the same
rate just before each phase (the HTTP floor), and `bench/baseline_ws.py`
subscribed to the owners' inbox channels, pushing the same `story.viewed` bus
events unchanged to one socket (push latency = arrival - the event's `seen_at`).

**Counts exact** (API `view_count` = `/viewers` count = 204 answers = the
owner's last `story.view_count` = `story.viewed` frames): {"yes, every phase" if exact else "**NO**"}.
**`story.view_count` ≤ {MAX_VIEW_COUNT_PER_S}/s per item** (by the frames' server `ts`, any 1 s window):
{"met" if coalesced else "**NOT met**"} (at most {max(p["view_count_max_per_1s"] for p in ph)}).
Open-loop rates sustained (≥ 95 % of the offered rate): {kept}; the most seen
events per second: {best["seen_per_s"]} ({best["label"]}). One
`SeenBook.mark_seen` (counted in-process on the server's own code) is
{trips["round_trips"]} Redis round trips: {", ".join(f"{k} {v}" for k, v in trips["commands"].items())};
the HTTP handler adds the caller's user lookup.

{load}

What the owner got:

{owner}
"""


def _ratio(a: float, b: float) -> float:
    return round(a / b, 1) if b and not math.isnan(a) and not math.isnan(b) else math.nan


def main() -> int:
    p = argparse.ArgumentParser(description="Seen benchmark (see module docstring)")
    p.add_argument("--rates", default="50,200,500",
                   type=lambda s: [int(x) for x in s.split(",") if x])  # fmt: skip
    p.add_argument("--phase-s", type=float, default=6.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--closed-loop-viewers", type=int, default=3000)
    p.add_argument("--no-closed-loop", dest="closed_loop", action="store_false")
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="re-render bench/results/seen.json")
    args = p.parse_args()
    if args.report_only:
        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
    else:
        run = asyncio.run(main_async(args))
        print(f"results: {h.write_results(NAME, run)}")
    return h.publish(NAME, report(run), args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
