"""What every benchmark shares: the machine, Redis, the server process, timing, reports.

A benchmark starts its own Redis (embedded, in a temp dir; or `$REDIS_URL` with a
private key prefix that is deleted afterwards) and the server as a real
subprocess on a free 127.0.0.1 port, stops both by PID, and reports each figure
next to a baseline measured in the same run, because a shared machine is noisy.
Results go to `bench/results/<name>.json` and to the benchmark's own section of
`docs/benchmarks.md` (between `<!-- bench:<name> -->` and `<!-- /bench:<name> -->`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis
from redis.utils import HIREDIS_AVAILABLE

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
MEDIA_DIR = ROOT / "tests" / "media"
DEFAULT_PREFIX = "st1:"  # the server's default `redis_prefix`

DOC_INTRO = """# Benchmarks

Each benchmark starts everything it needs by itself (an embedded Redis in a temp
dir, or `$REDIS_URL` with a private key prefix; the server as a real
`python -m server serve` subprocess on a free 127.0.0.1 port), measures over real
HTTP with keep-alive clients, and stops every process it started. Run one with
`python bench/tray.py` or `python bench/post.py`, or both with `make bench`.

The machines these run on are shared and noisy, so every figure comes with a
baseline measured in the same run, interleaved with it, and the ratio to that
baseline is the number to compare across machines. Raw figures are in
`bench/results/<name>.json`. Each section below is rewritten by its own benchmark.
"""


# --- the machine -------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in out:
                out[key.strip()] = value.strip()
    return out


def _meminfo_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def machine(redis_url: str) -> dict[str, Any]:
    """CPU model, cores, RAM, Python, Redis version, OS and the load when the run began."""
    cpu = _cpuinfo()
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": _meminfo_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis": redis_version,
        "redis_kind": "external ($REDIS_URL)"
        if os.environ.get("REDIS_URL")
        else "embedded (unix socket, AOF everysec)",
        "redis_py": f"redis-py {redis.__version__}, "
        + (
            "hiredis reply parser" if HIREDIS_AVAILABLE else "pure-Python reply parser (no hiredis)"
        ),
        "os": f"{_os_name()}; {platform.system()} {platform.release()} {platform.machine()}",
        "loadavg_at_start": loadavg(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu_model']}, {m['usable_cpus']} of {m['logical_cpus']} logical CPUs usable, "
        f"{m['ram_gib']} GiB RAM; {m['os']}; {m['python']}; Redis {m['redis']} "
        f"{m['redis_kind']}; {m['redis_py']}; "
        f"load average (1/5/15 min) at start {' / '.join(map(str, m['loadavg_at_start']))}"
        + (f", at end {' / '.join(map(str, m['loadavg_at_end']))}" if "loadavg_at_end" in m else "")
    )


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- Redis and the server process ----------------------------------------------------


@contextlib.contextmanager
def redis_for_bench(tmp: Path) -> Iterator[tuple[str, str]]:
    """`(url, prefix)`: `$REDIS_URL` with a private prefix (deleted after), else embedded."""
    external = os.environ.get("REDIS_URL")
    if external:
        prefix = f"bench{secrets.token_hex(4)}:"
        try:
            yield external, prefix
        finally:
            delete_prefix(external, prefix)
        return
    from server.store.embedded_redis import EmbeddedRedis

    embedded = EmbeddedRedis(tmp / "redis-data")
    url = embedded.start()
    try:
        yield url, DEFAULT_PREFIX
    finally:
        embedded.stop()  # SIGTERM to its PID, then wait


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        batch = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """`python -m server serve` on 127.0.0.1 as a child process; stopped by its PID."""

    redis_url: str | None  # None: the server starts its own embedded Redis in `data_dir`
    data_dir: Path
    prefix: str = DEFAULT_PREFIX
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    root: Path = ROOT  # the source tree whose `server` package runs (another ref's, to compare)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.root), os.environ.get("PYTHONPATH")])
            ),
            "STORIES_REDIS_PREFIX": self.prefix,
            "STORIES_LOG_LEVEL": "warning",  # no access log line per request
            **self.env,
        }
        env.pop("STORIES_RESOLVED_SETTINGS", None)
        args = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(self.data_dir),
                *(("--redis-url", self.redis_url) if self.redis_url else ()), "--dev-login"]  # fmt: skip
        log = (self.data_dir / "server.log").open("wb")
        self.proc = subprocess.Popen(args, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout_s} s: {self.log_tail()}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir / "server.log").read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the server's PID (graceful drain), SIGKILL to that PID if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def bench_environment(
    name: str, server_env: dict[str, str]
) -> Iterator[tuple[str, str, ServerProcess]]:
    """Temp dir, Redis and a started server: `(redis_url, prefix, server)`; all torn down."""
    with tempfile.TemporaryDirectory(prefix=f"stories-bench-{name}-") as raw:
        tmp = Path(raw)
        with redis_for_bench(tmp) as (url, prefix):
            server = ServerProcess(url, tmp / "server-data", prefix, server_env)
            try:
                yield url, prefix, server
            finally:
                server.stop()


# --- timing ---------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summary(latencies_s: list[float], elapsed_s: float) -> dict[str, float]:
    """p50/p90/p99/max/mean in ms and requests per second of one or more blocks."""
    ms = sorted(x * 1000 for x in latencies_s)
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(ms[-1], 3) if ms else float("nan"),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else float("nan"),
        "rps": round(len(ms) / elapsed_s, 1) if elapsed_s else float("nan"),
    }


@dataclass
class Samples:
    """Latencies and wall time accumulated over interleaved blocks of one workload."""

    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = summary(self.latencies_s, self.elapsed_s)
        if self.errors:
            out["errors"] = dict(self.errors)
        return out


Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


async def closed_loop(
    call: Call,
    clients: list[httpx.AsyncClient],
    *,
    concurrency: int,
    duration_s: float | None = None,
    count: int | None = None,
    expect: int = 200,
    into: Samples | None = None,
) -> Samples:
    """`concurrency` workers, worker i on `clients[i]`, calling back to back.

    They stop after `duration_s` or after `count` calls in all. Each worker has
    its own client with one keep-alive connection: a single shared httpx pool
    under concurrency stalls some requests for up to a second or more (seen here
    on `/healthz` at 8 workers), which would be charged to the server.
    """
    samples = into or Samples()
    stop_at = time.perf_counter() + duration_s if duration_s else float("inf")
    remaining = [count if count is not None else 1 << 62]

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at and remaining[0] > 0:
            remaining[0] -= 1
            t0 = time.perf_counter()
            resp = await call(client)
            samples.latencies_s.append(time.perf_counter() - t0)
            if resp.status_code != expect:
                samples.errors[f"{resp.status_code}: {resp.text[:120]}"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients[:concurrency]))
    samples.elapsed_s += time.perf_counter() - start
    return samples


@contextlib.asynccontextmanager
async def http_clients(base_url: str, count: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """`count` httpx clients, each with one keep-alive connection to `base_url`."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0)
            )
            for _ in range(count)
        ]
        yield clients


async def dev_login(client: httpx.AsyncClient, handle: str) -> tuple[str, dict[str, Any]]:
    resp = await client.post("/api/v1/auth/dev-login", json={"handle": handle})
    resp.raise_for_status()
    body = resp.json()
    return body["token"], body["user"]


def redis_commandstats(client: redis.Redis) -> tuple[Counter[str], Counter[str]]:
    """(calls, microseconds of Redis CPU) per command since Redis started (`INFO commandstats`)."""
    raw = client.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.items()})
    usec = Counter({k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in raw.items()})
    return calls, usec


# --- counting Redis round trips in-process ----------------------------------------------


@dataclass
class RedisTally:
    """Round trips (socket writes) and commands sent by every redis.asyncio connection."""

    round_trips: int = 0
    commands: Counter[str] = field(default_factory=Counter)


@contextlib.contextmanager
def count_redis() -> Iterator[RedisTally]:
    """Patch redis.asyncio's connection class to count what it sends, for this block only.

    One `send_packed_command` with health checking on is one request written to
    the socket and answered before the caller goes on: one round trip (a whole
    pipeline is one). `pack_command` runs once per command, pipelined or not.
    """
    from redis.asyncio.connection import AbstractConnection

    tally = RedisTally()
    orig_send = AbstractConnection.send_packed_command
    orig_pack = AbstractConnection.pack_command

    async def send(self: Any, command: Any, check_health: bool = True) -> None:
        if check_health:
            tally.round_trips += 1
        await orig_send(self, command, check_health)

    def pack(self: Any, *args: Any) -> list[bytes]:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        tally.commands[name.upper()] += 1
        return orig_pack(self, *args)

    AbstractConnection.send_packed_command = send
    AbstractConnection.pack_command = pack
    try:
        yield tally
    finally:
        AbstractConnection.send_packed_command = orig_send
        AbstractConnection.pack_command = orig_pack


def in_process_store(
    redis_url: str, prefix: str, data_dir: Path, *, pure_python_parser: bool = False
) -> Any:
    """A `server.store.Store` wired like the server's lifespan does, without the sweeper.

    `pure_python_parser` makes redis-py parse replies in Python even when hiredis is
    installed, to show what hiredis is worth.
    """
    from server.core.clock import SystemClock
    from server.core.keys import Keys
    from server.core.settings import Settings
    from server.core.signing import MediaSigner
    from server.store.client import redis_client
    from server.store.graph import Graph
    from server.store.scripts import Scripts
    from server.store.storage import LocalStorage
    from server.store.store import Store
    from server.store.users import UserStore

    client = redis_client(redis_url)
    if pure_python_parser:
        from redis.asyncio import Redis
        from redis.asyncio.connection import _AsyncRESP3Parser

        client = Redis.from_url(  # as server.store.client.redis_client, parser forced
            redis_url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=10,
            parser_class=_AsyncRESP3Parser,
        )
    keys = Keys(prefix)
    settings = Settings(redis_url=redis_url, redis_prefix=prefix, data_dir=str(data_dir))
    return Store(
        redis=client, keys=keys, scripts=Scripts(client), users=UserStore(client, keys),
        graph=Graph(client, keys), signer=MediaSigner(b"bench-media-secret"),
        storage=LocalStorage(data_dir), clock=SystemClock(), settings=settings,
    )  # fmt: skip


# --- reports ----------------------------------------------------------------------------


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def update_doc(name: str, body: str) -> Path:
    """Replace this benchmark's section of docs/benchmarks.md (create the file if needed)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else DOC_INTRO
    if start in text and end in text:
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".md.part")
    tmp.write_text(text)
    tmp.replace(DOC)
    return DOC


def publish(name: str, md: str, no_doc: bool = False) -> int:
    """Print a benchmark's report `md` and (unless `no_doc`) write it into its section of
    docs/benchmarks.md; the exit code of a benchmark that ran (0)."""
    print(md)
    if not no_doc:
        print(f"updated {update_doc(name, md)}")
    return 0


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(a: float, b: float) -> float:
    return round(a / b, 1) if b else float("nan")
