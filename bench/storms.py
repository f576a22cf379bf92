"""Storm phases of the fan-out benchmark: every socket closes at once, then connects at once.

Clients coming back after a network blip, a load balancer failing over, a
deploy elsewhere: thousands of sockets close, or open, in the same second.
`fanout.py` runs both storms on the stories server, on the `websockets`
baseline and on the bare uvicorn app (`uvicorn-idle`: what uvicorn itself costs
and stalls for), after its fan-out phases, with the same client processes:

- **close storm**: every client process closes all its sockets in one loop
  (a close frame, then FIN). The phase lasts until the server is quiet again
  (its CPU under 10 % of a core over half a second; for the stories server
  also: Redis lists none of its channels but the probe's and the canary).
- **connect storm**: every socket connects at once (no client-side limit).
  A socket is *served* when its `tray.snapshot` arrives (the baseline's
  `hello`). A 1013 close whose reason is `{"retry_after_ms": n}` is *told to
  retry*: the client waits n ms and tries again (up to `MAX_TRIES` tries).
  Anything else is a failure: a refused handshake, another close code, or a
  *bare drop* (the socket ended without a close frame).

During each storm a probe socket pings the server every 20 ms: the longest
ping→pong time is how long the server's event loop stalled (uvicorn and
`websockets` both answer pings inside `data_received`). Server CPU is psutil's
user+system time of the server's PID over the phase. The server log (level
warning) is searched for the broker's "deaf" verdict and for tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psutil

from bench import harness as h
from bench.wsclient import WSClient

MAX_TRIES = 4  # one try and up to three more after a 1013 with retry_after_ms
PING_EVERY_S = 0.02
TRACEBACK_MARKERS = ("Traceback", "Task exception", "Exception in callback", "never retrieved")


# --- in the client processes -------------------------------------------------------------


def retry_after_ms(client: WSClient) -> int | None:
    """The wait a 1013 close asked for (`{"retry_after_ms": n}` in its reason), else None."""
    if client.close_code != 1013:
        return None
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        wait = orjson.loads(client.close_reason).get("retry_after_ms")
        if isinstance(wait, int) and wait >= 0:
            return wait
    return None


def _verdict(client: WSClient | None, exc: BaseException | None) -> str:
    """Why a try did not end with the socket served: a short, countable label."""
    if client is not None and client.http_status:
        return f"handshake refused: {client.http_status[:40]}"
    if client is not None and client.close_code is not None:
        return f"closed {client.close_code}: {client.close_reason[:40]}"
    if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
        return f"connect failed: {type(exc).__name__}"
    if isinstance(exc, TimeoutError):
        return "no snapshot within the timeout"
    return "bare drop (no close frame)"


async def storm_connect(
    make: Callable[[str], WSClient], paths: list[str], port: int, timeout_s: float = 60.0
) -> tuple[list[WSClient], dict[str, Any]]:
    """Connect every path at once, honouring 1013 + retry_after_ms; (served clients, report)."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    served: list[WSClient] = []
    report: dict[str, Any] = {"first_try": 0, "after_retry": 0, "told_to_retry": 0,
                              "retry_waits_ms": [], "failures": {}}  # fmt: skip
    to_snapshot, to_answer = array("f"), array("f")

    async def one(path: str) -> None:
        for attempt in range(MAX_TRIES):
            client: WSClient | None = None
            exc: BaseException | None = None
            try:
                _, client = await asyncio.wait_for(
                    loop.create_connection(lambda: make(path), "127.0.0.1", port), timeout_s
                )
                ok = await asyncio.wait_for(asyncio.shield(client.ready), timeout_s)
            except (OSError, ConnectionError, TimeoutError) as e:
                ok, exc = False, e
            elapsed = time.perf_counter() - t0
            if attempt == 0:
                to_answer.append(elapsed)
            if ok and client is not None:
                to_snapshot.append(elapsed)
                served.append(client)
                report["after_retry" if attempt else "first_try"] += 1
                return
            if client is not None:
                client.close()
            wait = retry_after_ms(client) if client is not None else None
            if wait is None:
                why = _verdict(client, exc)
                report["failures"][why] = report["failures"].get(why, 0) + 1
                return
            report["told_to_retry"] += 1
            report["retry_waits_ms"].append(wait)
            if attempt + 1 < MAX_TRIES:
                await asyncio.sleep(wait / 1000)
        report["failures"]["still told to retry after the last try"] = (
            report["failures"].get("still told to retry after the last try", 0) + 1
        )

    await asyncio.gather(*(one(p) for p in paths))
    report["to_snapshot_s"] = to_snapshot.tobytes()
    report["to_answer_s"] = to_answer.tobytes()
    return served, report


def drop_all(clients: list[WSClient]) -> int:
    """Close every socket in one loop (close frame, then FIN); how many were open."""
    n = 0
    for c in clients:
        if not c.closed:
            n += 1
        c.close()
    return n


# --- in the benchmark process --------------------------------------------------------------


class Probe(WSClient):
    """One extra socket that pings every `PING_EVERY_S`; the slowest pong is the loop's stall."""

    def __init__(self, path: str, marker: bytes) -> None:
        super().__init__("127.0.0.1", path)
        self.marker = marker
        self.sent: dict[int, float] = {}
        self.worst_s = 0.0
        self.pongs = 0
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    def on_text(self, payload: bytes, now: float) -> None:
        if not self.ready.done() and self.marker in payload:
            self.ready.set_result(True)

    def on_pong(self, payload: bytes, now: float) -> None:
        sent = self.sent.pop(int(payload or b"-1"), None)
        if sent is not None:
            self.pongs += 1
            self.worst_s = max(self.worst_s, time.perf_counter() - sent)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._ping())

    async def _ping(self) -> None:
        while not self.closed:
            self._seq += 1
            self.sent[self._seq] = time.perf_counter()
            self.send_frame(0x9, str(self._seq).encode())
            await asyncio.sleep(PING_EVERY_S)

    def window(self) -> dict[str, Any]:
        """The worst ping→pong since the last call (a ping still unanswered counts its age)."""
        now = time.perf_counter()
        worst = max([self.worst_s, *(now - s for s in self.sent.values())])
        out = {"max_stall_ms": round(worst * 1000, 1), "pongs": self.pongs,
               "unanswered": len(self.sent)}  # fmt: skip
        self.worst_s, self.pongs = 0.0, 0
        self.sent.clear()
        return out

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.close()


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def settle(
    pid: int, done: Callable[[], Awaitable[bool]] | None = None, timeout_s: float = 90.0
) -> float:
    """Wait until `pid` is quiet (< 10 % of a core over 0.5 s) and `done()`; seconds waited."""
    t0 = time.perf_counter()
    samples = [cpu_s(pid)]
    while time.perf_counter() - t0 < timeout_s:
        await asyncio.sleep(0.1)
        samples.append(cpu_s(pid))
        quiet = len(samples) > 5 and samples[-1] - samples[-6] < 0.05
        if quiet and (done is None or await done()):
            break
    return time.perf_counter() - t0


def log_verdict(lines: list[str]) -> dict[str, Any]:
    """Deaf verdicts and tracebacks among server log lines."""
    return {
        "deaf_events": sum("deaf" in line for line in lines),
        "tracebacks": sum(any(m in line for m in TRACEBACK_MARKERS) for line in lines),
        "log_lines": len(lines),
        "log_sample": [line for line in lines if "deaf" in line or "Error" in line][:5],
    }


def _seconds(raw: list[bytes]) -> list[float]:
    out: list[float] = []
    for chunk in raw:
        a = array("f")
        a.frombytes(chunk)
        out.extend(a)
    return sorted(out)


def _pct(values: list[float], q: float) -> float:
    return round(h.percentile(values, q) * 1000, 1) if values else math.nan


def merge_connects(target: str, sockets: int, replies: list[dict[str, Any]]) -> dict[str, Any]:
    """One connect storm's figures from every client process's report."""
    failures: dict[str, int] = {}
    for r in replies:
        for k, v in r["failures"].items():
            failures[k] = failures.get(k, 0) + v
    snap = _seconds([r["to_snapshot_s"] for r in replies])
    answer = _seconds([r["to_answer_s"] for r in replies])
    waits = sorted(w for r in replies for w in r["retry_waits_ms"])
    return {
        "target": target, "storm": "connect", "sockets": sockets,
        "first_try": sum(r["first_try"] for r in replies),
        "after_retry": sum(r["after_retry"] for r in replies),
        "told_to_retry": sum(r["told_to_retry"] for r in replies),
        "retry_wait_ms": [waits[0], waits[-1]] if waits else None,
        "distinct_waits": len(set(waits)),
        "failures": failures,
        "p50_first_answer_ms": _pct(answer, 50), "p99_first_answer_ms": _pct(answer, 99),
        "p50_snapshot_ms": _pct(snap, 50), "p99_snapshot_ms": _pct(snap, 99),
        "max_snapshot_ms": round(snap[-1] * 1000, 1) if snap else math.nan,
    }  # fmt: skip


def storm_table(rows: list[dict[str, Any]]) -> str:
    """The report's table of storm figures."""
    return h.table(
        ["storm", "server", "sockets", "server CPU s", "CPU ms per socket", "wall s",
         "max loop stall ms", "deaf", "tracebacks", "served first try", "served after retry",
         "told to retry", "failed", "p99 first answer ms", "p99 to snapshot ms"],
        [[r["storm"], r["target"], r["sockets"], r["server_cpu_s"], r["cpu_ms_per_socket"],
          r["wall_s"], r["max_stall_ms"], r["deaf_events"], r["tracebacks"],
          r.get("first_try", "-"), r.get("after_retry", "-"), r.get("told_to_retry", "-"),
          sum(r["failures"].values()) if "failures" in r else "-",
          r.get("p99_first_answer_ms", "-"), r.get("p99_snapshot_ms", "-")] for r in rows],
    )  # fmt: skip


async def close_storm(
    t: Any, probe: Probe, done: Callable[[], Awaitable[bool]] | None
) -> dict[str, Any]:
    """Every socket of `t.pool` closes at once; until the server is quiet (and `done()`)."""
    t.new_log_lines()
    probe.window()
    cpu0, t0 = cpu_s(t.pid), time.perf_counter()
    dropped = sum(await asyncio.to_thread(t.pool.ask, ("drop",), 60))
    t.pool.connected = 0
    await settle(t.pid, done)
    wall, cpu = time.perf_counter() - t0, cpu_s(t.pid) - cpu0
    stall = probe.window()
    await asyncio.sleep(2.0)  # a deaf verdict comes from the canary, a second or two later
    return {
        "target": t.name, "storm": "close", "sockets": dropped, "wall_s": round(wall, 2),
        "server_cpu_s": round(cpu, 2),
        "cpu_ms_per_socket": round(cpu / dropped * 1000, 2) if dropped else math.nan,
        **stall, **log_verdict(t.new_log_lines()),
    }  # fmt: skip


async def connect_storm(t: Any, probe: Probe, paths: list[str]) -> dict[str, Any]:
    """Every path connects at once (1013 + retry_after_ms honoured); until the server is quiet."""
    t.new_log_lines()
    probe.window()
    cpu0, t0 = cpu_s(t.pid), time.perf_counter()
    replies = await asyncio.to_thread(t.pool.storm, paths)
    await settle(t.pid)
    wall, cpu = time.perf_counter() - t0, cpu_s(t.pid) - cpu0
    stall = probe.window()
    await asyncio.sleep(2.0)
    out = merge_connects(t.name, len(paths), replies)
    served = out["first_try"] + out["after_retry"]
    tries = served + out["told_to_retry"] + sum(out["failures"].values())
    return {
        **out, "wall_s": round(wall, 2), "server_cpu_s": round(cpu, 2),
        "cpu_ms_per_socket": round(cpu / served * 1000, 2) if served else math.nan,
        "cpu_ms_per_try": round(cpu / tries * 1000, 2) if tries else math.nan,
        **stall, **log_verdict(t.new_log_lines()),
    }  # fmt: skip
