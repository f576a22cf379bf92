"""Fan-out benchmark, drain phase: SIGTERM with 5,000 sockets whose clients obey the retry hint.

`python bench/fanout.py --drain [--drain-sockets 5000] [--drain-runs still,obedient,deaf]`
starts `python -m server serve` with its own embedded Redis (so stopping that
Redis is part of the stop being timed), connects the sockets from several client
processes (signed in with JWTs minted with the server's secret; each user is
created on first sign-in), lets them go idle, sends SIGTERM and measures:

- drain time: SIGTERM to the last close frame any client got, and SIGTERM to
  the process's exit, against `ws_drain_timeout_s` and its teardown margin
  (`server.drain.TEARDOWN_S`);
- close codes of the sockets open at SIGTERM (1006: no close frame);
- what every reconnect attempt met (HTTP status of the handshake, "refused" once
  the port is closed, "101" if the draining process accepted it again);
- `/readyz` right after SIGTERM, and the exit code.

Runs, each on a fresh server: `still` (clients that do not reconnect: the
baseline, measured in the same run), `obedient` (they reconnect as
`client_demo/stories-client.js` does: after 1012 the server's `retry_after_ms`
plus jitter, after a refused handshake exponential backoff with full jitter),
and `deaf` (obedient, plus `--drain-deaf` sockets that stop reading after their
snapshot, so they never answer the closing handshake and the drain must end them
at its deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import harness as h
from bench.baseline_ws import raise_nofile
from bench.fanout import JWT_SECRET, MEDIA_SECRET, SNAPSHOT, WSClient

NAME = "fanout-drain"
RETRY_AFTER_RE = re.compile(rb"\r\nretry-after: *(\d+)", re.IGNORECASE)
KINDS = ("still", "obedient", "deaf")


# --- the reconnect policy of client_demo/stories-client.js ------------------------------


def close_plan_ms(code: int, reason: str | bytes, attempt: int, rand: random.Random) -> int:
    """Milliseconds to wait before reconnecting, as `closePlan`/`backoffDelay` in stories-client.js."""
    if code == 1012:
        try:
            suggested = min(int(orjson.loads(reason)["retry_after_ms"]), 300_000)
        except (ValueError, KeyError, TypeError):
            return 500 + rand.randrange(4500)
        return suggested + rand.randrange(max(250, suggested // 4))
    return int(rand.random() * min(30_000, 500 * 2**attempt))


# --- the client processes -------------------------------------------------------------------


@dataclass
class User:
    """One simulated client across its connections."""

    path: str
    deaf: bool = False
    attempt: int = 0
    closes: list[tuple[float, int]] = field(default_factory=list)  # (wall time, code) per socket
    outcomes: Counter[str] = field(default_factory=Counter)  # per reconnect attempt


class Book:
    """What one client process knows: its users, whether they reconnect, what they met."""

    def __init__(self, port: int, reconnect: bool) -> None:
        self.port = port
        self.reconnect = reconnect
        self.armed = False  # reconnect only once the drain phase began
        self.rand = random.Random()
        self.retry_after: Counter[str] = Counter()
        self.deaf_socks: list[Sock] = []
        self.met_at: dict[str, list[float]] = {}  # outcome → wall times it was met

    def met(self, user: User, outcome: str) -> None:
        """Count what one reconnect attempt met, and when."""
        user.outcomes[outcome] += 1
        self.met_at.setdefault(outcome, []).append(time.time())

    def schedule(self, user: User, delay_ms: int) -> None:
        if self.reconnect and self.armed and not user.deaf:
            loop = asyncio.get_running_loop()
            loop.call_later(delay_ms / 1000, lambda: loop.create_task(self.connect(user)))

    async def connect(self, user: User, first: bool = False) -> Sock | None:
        """One connection attempt; a failed reconnect is counted and backed off here."""
        if not first and not self.armed:
            return None
        loop = asyncio.get_running_loop()
        try:
            _, sock = await asyncio.wait_for(
                loop.create_connection(lambda: Sock(user, self, first), "127.0.0.1", self.port), 10
            )
        except (OSError, TimeoutError) as exc:
            if first:
                raise
            self.met(user, "refused" if isinstance(exc, ConnectionRefusedError) else "timeout")
            user.attempt += 1
            self.schedule(user, close_plan_ms(1006, b"", user.attempt, self.rand))
            return None
        return sock


class Sock(WSClient):
    """One connection of a `User`; its handshake status and close feed the user's record."""

    def __init__(self, user: User, book: Book, first: bool) -> None:
        super().__init__("127.0.0.1", user.path)
        self.user, self.book, self.first = user, book, first
        self.status: bytes | None = None
        self.accepted = False
        if not first:  # nobody awaits a reconnect's readiness: retrieve its failure
            self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    def data_received(self, data: bytes) -> None:
        if self.status is None and not self.buf:  # the handshake answer: one segment on loopback
            self.status = data[: data.find(b"\r\n")]
            self.accepted = b" 101 " in self.status
            if not self.first:
                code = self.status.split(b" ")[1].decode() if b" " in self.status else "?"
                self.book.met(self.user, code)
                if m := RETRY_AFTER_RE.search(data):
                    self.book.retry_after[m[1].decode()] += 1
        super().data_received(data)

    def on_text(self, payload: bytes, now: float) -> None:
        if not self.ready.done() and (SNAPSHOT in payload or not self.first):
            self.ready.set_result(True)
            if self.user.deaf and self.transport is not None:
                self.transport.pause_reading()  # never reads (or answers) again

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        user = self.user
        if not self.accepted:
            if not self.first:
                if self.status is None:
                    self.book.met(user, "reset")
                user.attempt += 1
                self.book.schedule(user, close_plan_ms(1006, b"", user.attempt, self.book.rand))
            return
        code = self.close_code or 1006
        user.closes.append((time.time(), code))
        user.attempt = 0
        self.book.schedule(
            user, close_plan_ms(code, self.close_reason, user.attempt, self.book.rand)
        )


async def _client_loop(cmd_in: Connection, pipe: Connection, port: int, reconnect: bool) -> None:
    book = Book(port, reconnect)
    users: list[User] = []
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[Any] = asyncio.Queue()

    def read_commands() -> None:  # blocking reads in a thread (see bench/fanout.py)
        while True:
            try:
                msg = cmd_in.recv()
            except (EOFError, OSError):
                msg = ("close",)
            loop.call_soon_threadsafe(commands.put_nowait, msg)
            if msg[0] == "close":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    while True:
        cmd, *args = await commands.get()
        if cmd == "connect":
            paths, deaf, concurrency = args
            pipe.send(await _connect_all(book, users, paths, deaf, concurrency))
        elif cmd == "arm":
            book.armed = True
            pipe.send(True)
        elif cmd == "report":
            book.armed = False  # no more reconnects
            for s in book.deaf_socks:  # read what a deaf socket was sent: its close frame
                if s.transport is not None:
                    with contextlib.suppress(Exception):
                        s.transport.resume_reading()
            await asyncio.sleep(1.0)
            pipe.send(_report(users, book))
        elif cmd == "close":
            return


async def _connect_all(
    book: Book, users: list[User], paths: list[str], deaf: int, concurrency: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    errors: Counter[str] = Counter()

    async def one(user: User) -> None:
        async with gate:
            for attempt in range(3):
                try:
                    sock = await book.connect(user, first=True)
                    assert sock is not None
                    if await asyncio.wait_for(asyncio.shield(sock.ready), 20):
                        users.append(user)
                        if user.deaf:
                            book.deaf_socks.append(sock)
                        return
                except (OSError, ConnectionError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                await asyncio.sleep(0.2 * (attempt + 1))

    batch = [User(p, deaf=i < deaf) for i, p in enumerate(paths)]
    await asyncio.gather(*(one(u) for u in batch))
    return {"connected": len(users), "errors": dict(errors)}


def _report(users: list[User], book: Book) -> dict[str, Any]:
    first = [u.closes[0] for u in users if u.closes and not u.deaf]  # deaf: read at report time
    return {
        "users": len(users),
        "still_open": sum(1 for u in users if not u.closes),
        "first_close_codes": dict(Counter(str(c) for _, c in first)),  # deaf sockets apart
        "deaf_close_codes": dict(
            Counter(str(u.closes[0][1]) for u in users if u.deaf and u.closes)
        ),
        "first_close_times": [t for t, _ in first],
        "later_close_codes": dict(Counter(str(c) for u in users for _, c in u.closes[1:])),
        "reconnects": dict(sum((u.outcomes for u in users), Counter())),
        "retry_after_s": dict(book.retry_after),
        "met_at": book.met_at,
    }


def client_main(cmd_in: Connection, pipe: Connection, port: int, reconnect: bool) -> None:
    """Entry point of one client process."""
    raise_nofile()
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(_client_loop(cmd_in, pipe, port, reconnect))


class Pool:
    """`count` client processes; each holds a share of the users."""

    def __init__(self, port: int, count: int, reconnect: bool) -> None:
        ctx = mp.get_context("spawn")
        self.cmds: list[Connection] = []
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(count):
            cmd_in, cmd_out = ctx.Pipe(duplex=False)
            rep_in, rep_out = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=client_main, args=(cmd_in, rep_out, port, reconnect),
                               name=f"bench-drain-client-{i}", daemon=True)  # fmt: skip
            proc.start()
            cmd_in.close()
            rep_out.close()
            self.cmds.append(cmd_out)
            self.pipes.append(rep_in)
            self.procs.append(proc)

    def ask(self, msgs: list[tuple[Any, ...]], timeout_s: float) -> list[Any]:
        for cmd, msg in zip(self.cmds, msgs, strict=True):
            cmd.send(msg)
        out = []
        deadline = time.monotonic() + timeout_s
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a drain client did not answer {msgs[0][0]} in {timeout_s} s")
            out.append(pipe.recv())
        return out

    def close(self) -> None:
        """Ask each process to exit; terminate (then kill) by PID after 10 s."""
        for cmd in self.cmds:
            with contextlib.suppress(OSError):
                cmd.send(("close",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --- one run: a fresh server, the sockets, SIGTERM --------------------------------------------


def probe_readyz(http: httpx.Client, url: str, t_sig: float) -> dict[str, Any]:
    """The first `/readyz` answer after SIGTERM that is not 200 (polled for 2 s)."""
    deadline = time.monotonic() + 2.0
    with http:
        while True:
            try:
                r = http.get(url + "/readyz")
            except httpx.HTTPError as exc:
                return {"status": type(exc).__name__, "ms": round((time.time() - t_sig) * 1000)}
            if r.status_code != 200 or time.monotonic() > deadline:
                return {"status": r.status_code, "ms": round((time.time() - t_sig) * 1000),
                        "retry_after": r.headers.get("retry-after")}  # fmt: skip
            time.sleep(0.01)


def probe_handshake(port: int, token: str, t_sig: float) -> dict[str, Any]:
    """A new client's WebSocket handshake right after SIGTERM: the status line it saw."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )  # fmt: skip
            head = s.recv(4096)
    except OSError as exc:
        return {"status": type(exc).__name__, "ms": round((time.time() - t_sig) * 1000)}
    m = RETRY_AFTER_RE.search(head)
    return {"status": head[: head.find(b"\r\n")].decode(errors="replace"),
            "retry_after": m[1].decode() if m else None,
            "ms": round((time.time() - t_sig) * 1000)}  # fmt: skip


def _spread(times: list[float], t_sig: float) -> dict[str, float]:
    rel = sorted(t - t_sig for t in times)
    if not rel:
        return {}
    return {"first_s": round(rel[0], 3), "p50_s": round(h.percentile(rel, 50), 3),
            "p99_s": round(h.percentile(rel, 99), 3), "last_s": round(rel[-1], 3)}  # fmt: skip


def _merge(reports: list[dict[str, Any]], key: str) -> dict[str, int]:
    out: Counter[str] = Counter()
    for r in reports:
        out.update(r[key])
    return dict(sorted(out.items()))


async def run_one(kind: str, args: Any, tokens: list[str], tmp: Path) -> dict[str, Any]:
    """One drain: a fresh server and `args.drain_sockets` clients of `kind`; its figures."""
    import psutil

    from server.push.drain import TEARDOWN_S

    timeout_s = args.drain_timeout_s
    env = {"STORIES_JWT_SECRET": JWT_SECRET, "STORIES_MEDIA_SECRET": MEDIA_SECRET,
           "STORIES_WS_DRAIN_TIMEOUT_S": str(timeout_s)}  # fmt: skip
    server = h.ServerProcess(None, tmp / f"{kind}-server", env=env)  # its own embedded Redis
    server.start(60)
    pool = Pool(server.port, args.clients, reconnect=kind != "still")
    try:
        n, deaf = args.drain_sockets, args.drain_deaf if kind == "deaf" else 0
        paths = [f"/ws?token={tok}" for tok in tokens[:n]]
        shares = [paths[i :: args.clients] for i in range(args.clients)]
        deafs = [deaf // args.clients + (i < deaf % args.clients) for i in range(args.clients)]
        t0 = time.perf_counter()
        got = pool.ask([("connect", s, d, 64) for s, d in zip(shares, deafs, strict=True)], 300)
        connect_s = time.perf_counter() - t0
        connected = sum(g["connected"] for g in got)
        if connected != n:
            raise RuntimeError(f"{kind}: only {connected} of {n} connected: {got}")
        await asyncio.sleep(2.0)
        pool.ask([("arm",)] * args.clients, 10)
        assert server.proc is not None
        proc = server.proc
        redis_pids = [c.pid for c in psutil.Process(proc.pid).children(True) if "redis" in c.name()]
        log_at = (server.data_dir / "server.log").stat().st_size
        http = httpx.Client(timeout=5)  # made before: creating one takes tens of ms
        t_sig, m0 = time.time(), time.monotonic()
        proc.send_signal(signal.SIGTERM)
        readyz, handshake = await asyncio.gather(
            asyncio.to_thread(probe_readyz, http, server.base_url, t_sig),
            asyncio.to_thread(probe_handshake, server.port, tokens[-1], t_sig),
        )
        try:
            code = await asyncio.to_thread(proc.wait, timeout_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = f"SIGKILL after {timeout_s + 30:.0f} s"
        exit_s = time.monotonic() - m0
        await asyncio.sleep(1.5)  # reconnects now meet a closed port
        reports = pool.ask([("report",)] * args.clients, 60)
    finally:
        pool.close()
        server.stop()
    redis_left = [p for p in redis_pids if psutil.pid_exists(p)
                  and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    with (server.data_dir / "server.log").open("rb") as fh:
        fh.seek(log_at)
        log_lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    closes = _spread([t for r in reports for t in r["first_close_times"]], t_sig)
    met_when = {k: _spread([t for r in reports for t in r["met_at"].get(k, [])], t_sig)
                for k in sorted({k for r in reports for k in r["met_at"]})}  # fmt: skip
    out = {
        "kind": kind, "sockets": n, "deaf": deaf, "ws_drain_timeout_s": timeout_s,
        "teardown_margin_s": TEARDOWN_S, "connect_s": round(connect_s, 1),
        "closes_after_sigterm": closes, "exit_after_sigterm_s": round(exit_s, 2),
        "within_bound": exit_s <= timeout_s + TEARDOWN_S, "exit_code": code,
        "first_close_codes": _merge(reports, "first_close_codes"),
        "deaf_close_codes": _merge(reports, "deaf_close_codes"),
        "still_open_at_report": sum(r["still_open"] for r in reports),
        "reconnects": _merge(reports, "reconnects"),
        "reconnects_when": met_when,
        "later_close_codes": _merge(reports, "later_close_codes"),
        "retry_after_s": _merge(reports, "retry_after_s"),
        "readyz": readyz, "handshake": handshake, "embedded_redis_left": len(redis_left),
        "server_log": log_lines[:20],
    }  # fmt: skip
    print(
        f"  {kind:8} {n} sockets: closes {closes}; exit {code} after {exit_s:.2f} s "
        f"(bound {timeout_s + TEARDOWN_S:.0f} s); codes {out['first_close_codes']}; "
        f"reconnects {out['reconnects']} at {met_when}; readyz {readyz}; handshake {handshake}",
        flush=True,
    )
    return out


async def main_async(args: Any) -> dict[str, Any]:
    from server.core.auth import Authenticator
    from server.core.settings import Settings

    started = time.perf_counter()
    nofile = raise_nofile()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stories-bench-drain-") as raw:
        tmp = Path(raw)
        auth = Authenticator(Settings(jwt_secret=JWT_SECRET, data_dir=str(tmp)))
        now_s = int(time.time())
        tokens = [auth.mint(f"dr{i:05d}", now_s) for i in range(args.drain_sockets + 1)]
        with _embedded_redis_for_machine(tmp) as url:
            m = h.machine(url)
        m["open_files_limit"] = nofile
        for kind in args.drain_runs:
            runs.append(await run_one(kind, args, tokens, tmp))
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME, "date": h.now_utc(), "machine": m,
        "command": "python bench/fanout.py " + " ".join(sys.argv[1:]),
        "config": {"sockets": args.drain_sockets, "client_processes": args.clients,
                   "ws_drain_timeout_s": args.drain_timeout_s, "deaf": args.drain_deaf,
                   "runs": list(args.drain_runs)},
        "runs": runs, "duration_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


@contextlib.contextmanager
def _embedded_redis_for_machine(tmp: Path) -> Any:
    """A short-lived embedded Redis, only to report its version in the machine line."""
    with h.redis_for_bench(tmp / "version") as (url, _prefix):
        yield url


# --- the report -------------------------------------------------------------------------------


def _codes(c: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in c.items()) or "-"


def _exit(code: Any) -> str:
    return f"by signal {-code}" if isinstance(code, int) and code < 0 else str(code)


HEADERS = [
    "run", "sockets", "deaf", "drain timeout s", "p50 close s", "last close s",
    "exit after SIGTERM s", "exit ≤ timeout + margin", "exit",
    "close codes (sockets open at SIGTERM, deaf ones apart)", "deaf sockets' close codes",
    "reconnect attempts met", "/readyz after SIGTERM", "new handshake after SIGTERM",
    "redis-server left",
]  # fmt: skip


def _row(r: dict[str, Any]) -> list[Any]:
    closes, hs = r["closes_after_sigterm"], r["handshake"]
    return [
        r["kind"], r["sockets"], r["deaf"], r["ws_drain_timeout_s"], closes.get("p50_s", "-"),
        closes.get("last_s", "-"), r["exit_after_sigterm_s"],
        "met" if r["within_bound"] else "**NOT met**", _exit(r["exit_code"]),
        _codes(r["first_close_codes"]), _codes(r["deaf_close_codes"]), _codes(r["reconnects"]),
        f"{r['readyz']['status']} after {r['readyz']['ms']} ms",
        f"{hs['status']} (Retry-After {hs.get('retry_after')}) after {hs['ms']} ms",
        r["embedded_redis_left"],
    ]  # fmt: skip


def _when(runs: list[dict[str, Any]]) -> str:
    rows = [[r["kind"], k, r["reconnects"].get(k, 0), w.get("first_s"), w.get("p50_s"), w.get("last_s")]
            for r in runs for k, w in r.get("reconnects_when", {}).items()]  # fmt: skip
    heads = ["run", "reconnect met", "attempts", "first s", "p50 s", "last s"]
    return h.table(heads, rows) if rows else "(no reconnects)"


def _ratios(runs: list[dict[str, Any]]) -> str:
    still = next((r for r in runs if r["kind"] == "still"), None)
    if still is None:
        return "(no `still` run)"
    rows = []
    for r in runs:
        if r is still:
            continue
        last, base = (
            r["closes_after_sigterm"].get("last_s"),
            still["closes_after_sigterm"].get("last_s"),
        )
        rows.append([r["kind"], h.ratio(last, base) if last and base else "-",
                     h.ratio(r["exit_after_sigterm_s"], still["exit_after_sigterm_s"])])  # fmt: skip
    return h.table(["run", "last close ÷ still", "exit ÷ still"], rows)


def _before() -> str:
    """The same benchmark against the server before issue 14, if it was recorded."""
    path = h.RESULTS_DIR / f"{NAME}-before.json"
    if not path.exists():
        return ""
    import json

    old = json.loads(path.read_text())
    return f"""
Before (`{path.relative_to(h.ROOT)}`): the server at {old["code"]}, run {old["date"]}
on the same kind of machine (load average at start
{" / ".join(map(str, old["machine"]["loadavg_at_start"]))}); ratios are not comparable
across runs, the shape is: the process kept accepting and signing in the clients
that came back, and closed them 1012 again.

{h.table(HEADERS, [_row(r) for r in old["runs"]])}
"""


def report(run: dict[str, Any]) -> str:
    """The `fanout-drain` section of docs/benchmarks.md."""
    cfg, runs = run["config"], run["runs"]
    table = h.table(HEADERS, [_row(r) for r in runs])
    logs = "\n".join(f"- {r['kind']}: `{line}`" for r in runs for line in r["server_log"][:5])
    return f"""## Fan-out, drain: SIGTERM with {cfg["sockets"]:,} sockets whose clients obey the retry hint

Run {run["date"]} on {h.machine_line(run["machine"])}. Command: `{run["command"]}`
(about {run["duration_s"]:.0f} s).

Each run starts a fresh `python -m server serve` (one uvicorn worker) with its own
embedded Redis, so stopping that Redis is part of the stop being timed, and
`ws_drain_timeout_s = {cfg["ws_drain_timeout_s"]}`. {cfg["client_processes"]} client processes
(the minimal RFC 6455 client of `bench/fanout.py`, on uvloop) hold the sockets,
each a user signed in with a JWT. After 2 s idle the server gets SIGTERM.
`still`: clients that do not reconnect (the baseline of this run). `obedient`:
clients that reconnect as `client_demo/stories-client.js` does: after 1012 they
wait the server's `retry_after_ms` (1 to 6 s by default) plus up to 25 % jitter,
after a refused handshake `backoffDelay` (full jitter, 0.5 s doubling). `deaf`:
obedient, plus {cfg["deaf"]} sockets that stop reading after their snapshot and so
never answer the closing handshake (their close frame is read at the end; they
are left out of the close times). Close times are when the clients saw the
server's close frame; exit is when the server process ended. The bound is
`ws_drain_timeout_s + server.drain.TEARDOWN_S`. Reconnect attempts: the HTTP
status of the handshake (503 while draining; 101 would be a draining process
accepting again), `refused` once the port is closed, `reset` a connection that
was closed with no answer (taken in the moment uvicorn stopped).

{table}

When the reconnect attempts met what (seconds after SIGTERM):

{_when(runs)}

Ratios to `still` (same run): last close, process exit.

{_ratios(runs)}

Server log (warnings) after SIGTERM:
{logs or "- nothing"}
{_before()}"""


def run_cli(args: Any) -> int:
    """`bench/fanout.py --drain`: run, write `bench/results/fanout-drain.json` and the doc section."""
    if args.report_only:
        import json

        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
    else:
        run = asyncio.run(main_async(args))
        print(f"results: {h.write_results(NAME, run)}")
    return h.publish(NAME, report(run), args.no_doc)
