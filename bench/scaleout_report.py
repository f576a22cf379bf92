"""The `scaleout` section of docs/benchmarks.md, rendered from `bench/results/scaleout.json`."""

from __future__ import annotations

import math
from typing import Any

from bench import harness as h

TARGET_TRAY_RATIO = 1.5


def _ratios(main: float, each: list[float]) -> str:
    if not each or main is None or (isinstance(main, float) and math.isnan(main)):
        return "-"
    return f"{main}x ({', '.join(f'{x}' for x in each)})"


def messages_md(rows: list[dict[str, Any]]) -> str:
    equal = all(math.isclose(r["messages_per_post"], r["processes_holding"]) for r in rows)
    table = h.table(
        ["processes", "followers on them", "followers", "processes holding a follower",
         "PUBSUB NUMSUB", "Redis messages per post (taps)", "per process",
         "deliveries per post", "lost"],
        [[r["processes"], f"{r['case']}: {r['followers_per_process']}", r["followers"],
          r["processes_holding"], "/".join(map(str, r["numsub"])), r["messages_per_post"],
          " / ".join(f"{x:g}" for x in r["messages_per_post_per_process"]),
          r["deliveries_per_post"], r["lost"]] for r in rows],
    )  # fmt: skip
    posts = rows[0]["posts"] if rows else 0
    verdict = (
        "**equal to the number of processes holding a follower in every case**, whatever "
        "the number of followers"
        if equal
        else "**NOT equal to the number of processes holding a follower in every case**"
    )
    return f"""### 1. Redis pub/sub messages per post

Each server process reaches Redis through its own counting relay
(`bench/pubsub_tap.py`): it forwards every byte unchanged and counts, in the
Redis → server direction, the pub/sub `message` frames by channel. Redis 6.2/7.0
keep no per-client count of delivered messages (`CLIENT LIST` has no
`tot-net-out` before 7.2, `omem` is only what is queued now) and `INFO stats`
sums bytes over every client, so counting at the process's socket is the exact
measure. Each case is {posts} posts (`StoryWriter._publish_new`) over 4 creators
whom every follower follows; "Redis messages per post" is the frames on those
creators' channels over all the taps, divided by the posts (the owner's inbox
channel, also published to, has no subscriber here; pattern messages: 0).
`PUBSUB NUMSUB` of each creator channel was read before posting. Result:
{verdict}.

{table}
"""


def fanout_md(run: dict[str, Any]) -> str:
    cfg = run["config"]
    judged = run["fanout_judged"]
    names = {"steady10": "10 posts/s", "burst": f"burst of {cfg['burst']}"}
    table = h.table(
        ["phase", "processes", "delivered/s (median)", "÷ 1 process (each round)", "p50 ms",
         "p99 ms", "p99 ÷ 1 process (each round)", "server CPU µs/delivery",
         "server CPU (cores)", "lost", "held back by"],
        [[names.get(r["phase"], r["phase"]), r["processes"], r["delivered_per_s"],
          _ratios(r["rate_ratio"], r["rate_ratios"]), r["p50_ms"], r["p99_ms"],
          _ratios(r["p99_ratio"], r["p99_ratios"]), r["cpu_us_per_delivery"],
          r["server_cores"], r["lost"], ", ".join(r.get("held_back_by", []))] for r in judged],
    )  # fmt: skip
    idle_rows = []
    for p, rows in run["fanout"]["idle"].items():
        for r in rows:
            idle_rows.append([p, r["process"], r["sockets"], r["rss_before_mib"],
                              r["rss_after_mib"], r["kib_per_idle_socket"], r["sign_in_cpu_ms"]])  # fmt: skip
    idle = h.table(["group (processes)", "process", "sockets", "RSS before MiB",
                    "RSS after MiB", "KiB per idle socket", "server CPU ms per sign-in"],
                   idle_rows)  # fmt: skip
    burst = {r["processes"]: r for r in judged if r["phase"] == "burst"}
    gain = ", ".join(f"{p} processes {burst[p]['rate_ratio']}x" for p in (2, 4) if p in burst)
    one_cores = burst[1]["server_cores"] if 1 in burst else "-"
    cpu_by_p = " / ".join(str(burst[p]["cpu_us_per_delivery"]) for p in sorted(burst))
    procs = " / ".join(str(p) for p in sorted(burst))
    max_p = max(burst, default=1)
    if 2 in burst and 4 in burst:
        r2, r4 = burst[2]["rate_ratio"], burst[4]["rate_ratio"]
        four_vs_two = (
            f"4 processes gave no gain over 2 ({r4}x against {r2}x), as 2 cores predict."
            if r4 <= r2 * 1.1
            else f"4 processes gave {r4}x, 2 gave {r2}x."
        )
    else:
        four_vs_two = ""
    cores = run["machine"]["usable_cpus"]
    return f"""### 2. Fan-out with 1, 2 and 4 processes on one machine

Three groups run at once on the same Redis, each with its own {cfg["followers"]:,}
followers split evenly over its processes (so {cfg["followers"]:,}, 2 x {cfg["followers"] // 2:,}
and 4 x {cfg["followers"] // 4:,} sockets) and its own {cfg["creators"]} creators whom
each of its followers follows; each group's sockets are held by {cfg["clients"]}
client processes in all. The groups take turns phase by phase, {cfg["rounds"]} rounds,
the order rotating; ratios are to the 1-process group in the same round (the
median, then each round's). Phases, figures and clients are those of
`bench/fanout.py` (`run_phase`): 10 posts/s for {cfg["phase_s"]:g} s
({cfg["followers"] * 10:,} deliveries/s offered), then {cfg["burst"]} posts back to back.
Server CPU is the sum over the group's processes.

{table}

In the burst delivered/s went {gain} of the 1-process group's (same rounds).
This machine's {cores} cores carry the servers, their {cfg["clients"]} client
processes (which take about as much CPU per delivery as the servers: see the
fan-out section) and Redis together, so past saturation more processes cannot
add throughput: {four_vs_two} The 1-process server itself used
{one_cores} of a core in the burst, so on this machine the clients, not the
server, set the limit, and the scaling that more cores would give cannot be
shown here. Server CPU per delivery rises with the processes in the burst
({cpu_by_p} µs at {procs} processes): each process has a smaller share of
every post to pack into its writes, and {max_p} event loops take turns on
{cores} cores. "Held back by" is per round: kept up (≥ 95 % of the
offered rate, p99 < 500 ms), server CPU (the group's processes used ≥ 0.8 of
each core they can have, min(P, {cores})), or clients / machine.

Idle memory and sign-in cost per process, measured while connecting (RSS 3 s
after the last socket; each socket follows {cfg["creators"]} creators):

{idle}
"""


def tray_md(run: dict[str, Any]) -> str:
    t, cfg = run["tray"], run["config"]
    names = list(t["http"])
    single, cluster = names[0], names[-1]  # one Redis 7 over TCP first, the cluster last
    http, ip = t["http"], t["in_process"]
    exact = http[cluster]["p99_ms"] / http[single]["p99_ms"]
    ratio = round(exact, 3)
    verdict = "met" if exact <= TARGET_TRAY_RATIO else "NOT met"
    p50 = round(http[cluster]["p50_ms"] / http[single]["p50_ms"], 2)
    rows = []
    for name in names:
        s, i = http[name], ip[name]
        rows.append([name, s["p50_ms"], s["p99_ms"], s["max_ms"], s["n"], i["p50_ms"],
                     i["p99_ms"], i["n"]])  # fmt: skip
    for name in names[1:]:
        rows.append([f"{name} ÷ {single}", round(http[name]["p50_ms"] / http[single]["p50_ms"], 2),
                     round(http[name]["p99_ms"] / http[single]["p99_ms"], 2), "", "",
                     round(ip[name]["p50_ms"] / ip[single]["p50_ms"], 2),
                     round(ip[name]["p99_ms"] / ip[single]["p99_ms"], 2), ""])  # fmt: skip
    table = h.table(["Redis", "HTTP p50 ms", "HTTP p99 ms", "HTTP max ms", "HTTP n",
                     "in-process p50 ms", "in-process p99 ms", "in-process n"], rows)  # fmt: skip
    return f"""### 3. Tray at 2,000 followed: a Redis Cluster vs one Redis

`bench/tray.py`'s data (2,000 creators, 500 with active items, close friends,
hidden, seen; {t["rings"]} rings for the viewer following all 2,000) seeded into
three Redis set-ups, a server on each: **one Redis 7** (Debian's redis-server
{run["machine"].get("debian_redis", "7")} on 127.0.0.1 TCP, no persistence), the
benchmark's **embedded Redis** ({run["machine"]["redis_kind"]}, Redis
{run["machine"]["redis"]}: what the other sections use), and a local **cluster** of 3
primaries + 3 replicas of the same redis-server 7 with the same flags
(`tests/cluster.py`). `GET /api/v1/tray` with one keep-alive client per server,
{cfg["tray_rounds"]} rounds of {cfg["tray_block_s"]:g} s blocks, the three servers in
turn (the order rotating every round); in-process, `StoryReader.tray`
{cfg["tray_in_process_calls"]} times each, alternating call by call. The target
compares the cluster with one Redis 7 (same binary, same flags, TCP both):
**cluster p99 ≤ {TARGET_TRAY_RATIO}x — {verdict} ({ratio}x; at p50 {p50}x).** The
embedded Redis row shows what the unix socket (and Redis 6.2) gives besides. On
the cluster the rings are read by one `tray_scan.lua` call per hash slot (about
one per active owner, pipelined per node) instead of one call for all owners,
each packed and parsed by redis-py's cluster client; not profiled here.

{table}
"""


def capacity_md(run: dict[str, Any]) -> str:
    c = run["capacity"]
    a, m, r = c["assumptions"], c["measured"], c["result"]
    dist = ", ".join(f"{s:.1%} of posts reach {f:,}" for s, f in a["follower_distribution"])
    steps = h.table(["quantity", "arithmetic", "value"],
                    [[w, f, f"{v:.3g}" if v < 100 else f"{v:,.0f}"]
                     for w, f, v in c["steps"]])  # fmt: skip
    return f"""### 4. Capacity estimate for {a["sockets"]:,} sockets

Measured here (the 1-process group of phase 2): **{m["kib_per_socket"]} KiB** of server
RSS per idle socket, **{m["cpu_us_per_delivery"]} µs** of server CPU per delivery at
10 posts/s and {m["cpu_us_per_delivery_burst"]} µs in the burst (packed writes),
**{m["sign_in_cpu_ms"]} ms** per sign-in, {m["base_rss_mib"]} MiB RSS before any socket.
Phase 1 gives the Redis side: one pub/sub message per post per process holding a
follower. Processes per core: one, by construction (a process is one event
loop, so it uses one core at most; phase 2 could not show the gain of a second
core, the clients sharing them). The sign-in figure is for sockets following
{run["config"]["creators"]} creators; it grows with the creators followed (the
fan-out section's sockets follow 24: 1.38 ms), so the sign-in line below is the
first to revisit for real follow counts.

Assumed: {a["sockets"]:,} sockets online; {a["peak_posts_per_s"]:,} posts/s at peak;
online followers per post: {dist}; each socket signs in again every
{a["reconnect_every_s"]} s; a process runs at most at {a["cpu_headroom"]:.0%} of its
core and to {a["process_rss_budget_gib"]:g} GiB RSS; the biggest creator has
{a["worst_post_followers"]:,} followers online; sockets spread over the processes
at random ("E[f over N]" = N(1 - (1 - 1/N)^f) processes hold a follower).

{steps}

So: about **{r["processes"]:,} processes of {r["sockets_per_process"]:,} sockets**
({r["cores"]:,} cores, {r["ram_gib"]:,} GiB of RAM for the servers), of which
{r["cores_busy_at_peak"]} cores are busy at peak ({r["delivery_cores"]} for deliveries, {r["sign_in_cores"]} for sign-ins).
Redis carries {r["pubsub_messages_per_post"]} pub/sub messages per post
({r["pubsub_messages_per_s"]:,}/s at peak) for {r["deliveries_per_post"]:,} deliveries per post.
A restart of one process puts {r["restart_cpu_s"]} CPU-s of sign-ins on the others.
{r["bound_by"].capitalize()} sets the sockets per process. Not measured here: the kernel's
own memory per TCP socket (outside the process's RSS; a few KiB per idle
socket), TLS, the load balancer, and Redis's CPU at that message rate (on a
cluster, classic pub/sub sends every message over the bus to every node:
`docs/deploy.md`).
"""


def render(run: dict[str, Any]) -> str:
    """The whole Markdown section."""
    m = run["machine"]
    loads = ", ".join(f"{k} {v[0]}" for k, v in run.get("load_at_phase", {}).items()) or "-"
    parts = [
        f"""## Scale-out: processes on one Redis, and the tray on a Redis Cluster

Run {run["date"]} on {h.machine_line(m)}. Command: `{run["command"].strip()}`
(about {round(run["duration_s"])} s). Servers, client processes, Redis and the
cluster all ran on this machine, which other work may share: load average
(1 min) at the start of each phase: {loads}.
"""
    ]
    if run.get("messages"):
        parts.append(messages_md(run["messages"]))
    if run.get("fanout_judged"):
        parts.append(fanout_md(run))
    if run.get("tray"):
        parts.append(tray_md(run))
    if run.get("capacity"):
        parts.append(capacity_md(run))
    return "\n".join(parts)
