"""Fan-out CPU per delivery: this tree's server against the same server at a git ref, one run.

`python bench/fanout.py --before REF [--followers 1000,5000] [--rounds 3]` exports the
tree at REF (`git archive`, into a temporary folder) and runs both servers side by side
on one Redis: `now` (this tree) and `before` (REF), each `python -m server serve` of its
own source, each with its own N followers (real users, real tokens) following its own
creators, so a post reaches exactly one of them. Posts are the real `story.new` event
(`StoryWriter._publish_new` of this tree: the event's shape is the API's, the same at
both refs). Phases — 10 posts/s and a burst of back-to-back posts — alternate between
the two servers, `--rounds` times, in alternating order, so drift on a shared machine
falls on both; the figure is each server's median over the rounds of its CPU (user +
system) per delivered event, and the ratio now ÷ before. The refactor target of issue
10: within 5 %.

The clients, phases and accounting are those of `bench/fanout.py` (`ClientPool`,
`run_phase`); everything listens on 127.0.0.1 and every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import fanout as f  # noqa: E402
from bench import harness as h  # noqa: E402
from bench.baseline_ws import raise_nofile  # noqa: E402

NAME = "fanout-before"
NOW, BEFORE = "now", "before"
TARGET_CPU_RATIO = 1.05  # issue 10: CPU per delivery within 5 % of before


def export_ref(ref: str, dest: Path) -> str:
    """Write the tree of git `ref` into `dest`; returns the full commit id."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", ref], check=True,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True,
                             capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def follower(target: str, i: int) -> str:
    return f"f{target[0]}{i:05d}"


async def seed(store: Any, followers: int, creators: int) -> dict[str, list[dict[str, Any]]]:
    """Per server: `followers` users following its own `creators`; returns the creators."""
    now = store.clock.now_ms()
    owners: dict[str, list[dict[str, Any]]] = {}
    for target in (NOW, BEFORE):
        ids = [f.creator_id(target, i) for i in range(creators)]
        owners[target] = [await store.users.create(f"bench_{c}", f"Creator {c}", uid=c)
                          for c in ids]  # fmt: skip
        viewers = [follower(target, i) for i in range(followers)]
        for start in range(0, followers, 50):
            await asyncio.gather(*[store.users.create(f"bench_{v}", None, uid=v)
                                   for v in viewers[start : start + 50]])  # fmt: skip
        await f.follow_all(store, viewers, ids, now)
    return owners


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from server.core.auth import Authenticator
    from server.core.settings import Settings

    started = time.perf_counter()
    raise_nofile()
    sizes = sorted(args.followers)
    env = {"STORIES_JWT_SECRET": f.JWT_SECRET, "STORIES_MEDIA_SECRET": f.MEDIA_SECRET}
    phases = [("steady10", 10.0, int(10 * args.phase_s)), ("burst", None, args.burst)]
    rows: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stories-before-")))
        commit = export_ref(args.before, tmp / "before-src")
        url, prefix = stack.enter_context(h.redis_for_bench(tmp))
        m = h.machine(url)
        store = h.in_process_store(url, prefix, tmp / "in-process")
        owners = await seed(store, sizes[-1], args.creators)
        auth = Authenticator(Settings(jwt_secret=f.JWT_SECRET, data_dir=str(tmp)))
        now_s = int(time.time())
        servers = {
            NOW: h.ServerProcess(url, tmp / "now-data", prefix, env),
            BEFORE: h.ServerProcess(url, tmp / "before-data", prefix, env, root=tmp / "before-src"),
        }
        targets: dict[str, f.Target] = {}
        for name, server in servers.items():
            server.start()
            stack.callback(server.stop)
            assert server.proc is not None
            pool = f.ClientPool(name, server.port, f.SNAPSHOT, args.clients)
            stack.callback(pool.close)
            targets[name] = f.Target(name, server.proc.pid, pool, owners[name],
                                     server.data_dir / "server.log")  # fmt: skip
        poster = f.Poster(store)
        phase_id, have = 0, 0
        for size in sizes:
            for name, t in targets.items():
                paths = [f"/ws?token={auth.mint(follower(name, i), now_s)}"
                         for i in range(have, size)]  # fmt: skip
                rss0 = f.rss(t.pid)
                got = t.pool.connect(paths)
                await asyncio.sleep(3.0)
                added = got["connected"] - have
                idle.append({"target": name, "followers": got["connected"],
                             "kib_per_idle_connection":
                                 round((f.rss(t.pid) - rss0) / max(1, added) / 1024, 1)})  # fmt: skip
                if got["connected"] != size:
                    raise RuntimeError(f"{name}: only {got['connected']} of {size} connected")
            have = size
            for r in range(args.rounds):
                for n, (kind, rate, posts) in enumerate(phases):
                    order = [NOW, BEFORE] if (r + n) % 2 == 0 else [BEFORE, NOW]
                    for name in order:
                        phase_id += 1
                        res = await f.run_phase(targets[name], poster, phase_id, kind, rate,
                                                posts, args.drain_s)  # fmt: skip
                        res["round"] = r
                        rows.append(res)
        await store.redis.aclose()
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME, "date": h.now_utc(), "machine": m,
        "command": "python bench/fanout.py " + " ".join(sys.argv[1:]),
        "before": {"ref": args.before, "commit": commit},
        "config": {"followers": sizes, "creators": args.creators, "rounds": args.rounds,
                   "clients": args.clients, "phase_s": args.phase_s, "burst": args.burst},
        "phases": rows, "idle": idle, "duration_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def judge(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (followers, phase): each server's median CPU µs per delivery and now ÷ before."""
    out = []
    keys = sorted({(p["followers"], p["phase"]) for p in run["phases"]})
    for n, kind in keys:
        mine = {t: [p for p in run["phases"]
                    if (p["followers"], p["phase"], p["target"]) == (n, kind, t)]
                for t in (NOW, BEFORE)}  # fmt: skip
        cpu = {t: statistics.median(p["server_cpu_us_per_delivery"] for p in ps)
               for t, ps in mine.items()}  # fmt: skip
        user = {t: statistics.median(p["server_cpu_us_per_delivery"] - p["server_sys_us_per_delivery"]
                                     for p in ps) for t, ps in mine.items()}  # fmt: skip
        lost = sum(p["lost"] for p in run["phases"] if (p["followers"], p["phase"]) == (n, kind))
        ratio = round(cpu[NOW] / cpu[BEFORE], 3) if cpu[BEFORE] else float("nan")
        out.append({"followers": n, "phase": kind, "now_us": round(cpu[NOW], 2),
                    "before_us": round(cpu[BEFORE], 2), "ratio": ratio, "lost": lost,
                    "now_user_us": round(user[NOW], 2), "before_user_us": round(user[BEFORE], 2),
                    "met": ratio <= TARGET_CPU_RATIO})  # fmt: skip
    return out


def report(run: dict[str, Any]) -> str:
    rows = run["judged"]
    met = all(r["met"] for r in rows)
    table = h.table(
        ["followers", "phase", "now µs CPU / delivery", "before µs", "now ÷ before",
         "of which user: now / before µs", "lost"],
        [[f"{r['followers']:,}", r["phase"], r["now_us"], r["before_us"], r["ratio"],
          f"{r['now_user_us']} / {r['before_user_us']}", r["lost"]] for r in rows],
    )  # fmt: skip
    idle = h.table(
        ["server", "sockets", "KiB RSS per idle socket"],
        [[i["target"], f"{i['followers']:,}", i["kib_per_idle_connection"]] for i in run["idle"]],
    )
    m = run["machine"]
    return f"""## Fan-out before and after a change: `python bench/fanout.py --before REF`

Run {run["date"]} on {h.machine_line(m)}.
Command: `{run["command"]}`. `before` is `{run["before"]["ref"]}`
({run["before"]["commit"][:12]}), exported with `git archive` and served by its own
`python -m server serve`; `now` is this tree. Each has its own followers and creators
on one Redis; phases alternate between them, {run["config"]["rounds"]} rounds, and each
figure is the median over the rounds of server CPU (user + system) per delivered event.

Target (issue 10, the restructure into layer packages): now within 5 % of before,
every row: **{"met" if met else "NOT met"}**.

{table}

{idle}
"""


def run_cli(args: argparse.Namespace) -> int:
    """`bench/fanout.py --before REF`: run, write the results and the docs section."""
    run = asyncio.run(main_async(args))
    run["judged"] = judge(run)
    print(f"results: {h.write_results(NAME, run)}")
    return h.publish(NAME, report(run), args.no_doc)
