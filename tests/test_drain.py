"""SIGTERM drain of a real server process with clients that obey the retry hint.

`python -m server serve` (embedded Redis, tmp data dir, free port) holds a few
hundred real WebSocket clients (the `websockets` library) that reconnect the way
`client_demo/stories-client.js` does (`closePlan`): after a 1012 they wait the
server's `retry_after_ms` plus jitter; after a refused handshake they back off
exponentially. One more client completes the handshake and then never reads
again, so it never answers the closing handshake. Then SIGTERM, and:

- `/readyz` is 503 at once, and a new handshake gets HTTP 503 with Retry-After;
  no reconnect is accepted again (each gets 503 while the process drains, or a
  refused TCP connect once it stopped listening, or, in that moment, a
  connection closed with no answer);
- every socket, the deaf one too, got a close frame 1012 with
  `{"retry_after_ms"}` in the configured window (no 1006);
- the deaf socket did not hold the drain, nor did a second SIGTERM cut it short:
  the process ended, by the signal, within `ws_drain_timeout_s` + a generous
  margin, and its embedded redis-server is gone.

Also the pure parts: the drain's deadlines, the retry hints, the refusal's ASGI
messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import psutil
import websockets
from starlette.websockets import WebSocket

from server.api.ws import refuse
from server.core import frames
from server.core.auth import Authenticator
from server.core.settings import Settings
from server.push.connection import Close, Connection
from server.push.drain import (
    CLOSE_BATCH,
    TEARDOWN_S,
    Budget,
    Drain,
    retry_after_s,
)
from server.push.retry import retry_reason
from tests.test_push_processes import JWT_SECRET, ServerProcess, _worker_of_sockets, shared_env

CLIENTS = 300
DRAIN_S, BASE_MS, SPREAD_MS = 4, 500, 1000
MARGIN_S = TEARDOWN_S + 2.0  # the stated margin + 2 s for a loaded 2-core machine


# ---- the pure parts ------------------------------------------------------------------


def test_budget_deadlines_follow_the_drain_timeout() -> None:
    b = Budget(started=100.0, timeout_s=10.0)
    assert (b.flush_by, b.sockets_by, b.teardown_by) == (105.0, 110.0, 110.0 + TEARDOWN_S)
    assert b.left(5.0, now=100.0) == 5.0  # a step's own cap when there is time
    assert b.left(5.0, now=110.0) == TEARDOWN_S  # what is left of the margin
    assert b.left(5.0, now=200.0) == 0.1  # late: a short try, not a long wait


def test_retry_reason_spans_base_plus_spread() -> None:
    s = Settings(ws_reconnect_base_ms=1000, ws_reconnect_spread_ms=5000)
    assert orjson.loads(retry_reason(s, rand=lambda n: 0)) == {"retry_after_ms": 1000}
    assert orjson.loads(retry_reason(s, rand=lambda n: n - 1)) == {"retry_after_ms": 5999}
    assert retry_after_s(s) == 1
    assert retry_after_s(Settings(ws_reconnect_base_ms=1500)) == 2
    assert retry_after_s(Settings(ws_reconnect_base_ms=0)) == 1


async def _refusal(extensions: dict[str, object]) -> list[dict[str, object]]:
    """What `refuse` sends through ASGI for a handshake on a server with `extensions`."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "extensions": extensions}
    await refuse(WebSocket(scope, receive, send), Settings(ws_reconnect_base_ms=2500))  # type: ignore[arg-type]
    return sent


async def test_refuse_answers_503_with_retry_after_or_closes_before_accept() -> None:
    start, body = await _refusal({"websocket.http.response": {}})
    assert start["type"] == "websocket.http.response.start" and start["status"] == 503
    headers = dict(start["headers"])  # type: ignore[arg-type]
    assert headers[b"retry-after"] == b"3"
    assert headers[b"content-type"] == b"application/problem+json"
    assert orjson.loads(body["body"])["type"].endswith("/restarting")  # type: ignore[arg-type]
    # no denial extension: closed before accept (uvicorn would answer 403)
    assert [m["type"] for m in await _refusal({})] == ["websocket.close"]


class StubWire:
    """Stands in for the network (no socket here): the socket is gone once closed or ended."""

    def __init__(self) -> None:
        self.closed = self.ended = False

    def send(self, payload: frames.Encoded) -> None:
        return None

    def gone(self) -> bool:
        return self.closed

    def end(self) -> None:
        self.ended = self.closed = True


@dataclass
class StubHub:
    """What a drain needs of the hub (`drain.Drainable`)."""

    conns: set[Connection]
    draining: bool = False
    interest: dict[str, set[Connection]] = field(default_factory=dict)
    signing_in: set[Close] = field(default_factory=set)


def _conn(name: str, closes: list[str], answers: bool = True) -> Connection:
    wire = StubWire()

    async def close(code: int, reason: str) -> None:
        assert code == 1012 and "retry_after_ms" in orjson.loads(reason)
        closes.append(name)
        wire.closed = answers  # a client that answers the closing handshake

    return Connection({"id": name}, wire, close, 1 << 20)  # type: ignore[arg-type]


async def test_a_slow_reader_delays_only_its_own_close() -> None:
    closes: list[str] = []
    fast, slow = _conn("fast", closes), _conn("slow", closes)
    slow.outbox.push(frames.encode("pong", 0))  # not flushed yet
    hub = StubHub({fast, slow}, interest={"ch": {fast, slow}})
    drain = Drain(hub, Settings(ws_drain_timeout_s=60))  # type: ignore[arg-type]
    task = asyncio.create_task(drain.run())
    await asyncio.wait_for(_until(lambda: bool(closes)), 5)
    assert hub.draining and closes == ["fast"] and hub.conns == {slow}
    slow.outbox.take()  # its frames went out
    await asyncio.wait_for(task, 5)
    assert closes == ["fast", "slow"] and not hub.conns and not hub.interest
    assert (drain.closed, drain.cut) == (2, 0)


async def test_a_socket_that_never_answers_is_ended_at_the_deadline() -> None:
    closes: list[str] = []
    ok, deaf = _conn("ok", closes), _conn("deaf", closes, answers=False)
    hub = StubHub({ok, deaf})
    drain = Drain(hub, Settings(ws_drain_timeout_s=0.2))  # type: ignore[arg-type]
    await asyncio.wait_for(drain.run(), 5)
    assert sorted(closes) == ["deaf", "ok"]  # both were sent 1012
    assert deaf.wire.ended and not ok.wire.ended and drain.cut == 1  # type: ignore[attr-defined]


async def test_closes_go_out_in_batches_and_a_blocked_close_holds_nobody() -> None:
    """Every close frame is written within ceil(n / CLOSE_BATCH) loop iterations, although
    none of the closes completes (each socket's buffer is full): no await per socket."""
    n, released, ticks = 1200, asyncio.Event(), [0]
    started: list[int] = []  # the loop iteration in which each close was written

    def blocked(name: str) -> Connection:
        async def close(code: int, reason: str) -> None:
            started.append(ticks[0])
            await released.wait()

        return Connection({"id": name}, StubWire(), close, 1 << 20)  # type: ignore[arg-type]

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0)

    conns = [blocked(f"u{i}") for i in range(n)]
    hub = StubHub(set(conns))
    tick = asyncio.create_task(ticker())
    try:
        drain = Drain(hub, Settings(ws_drain_timeout_s=0.3))  # type: ignore[arg-type]
        await asyncio.wait_for(drain.run(), 5)
    finally:
        tick.cancel()
        released.set()
    assert len(started) == n and drain.closed == n
    assert len(set(started)) <= math.ceil(n / CLOSE_BATCH), sorted(set(started))
    assert drain.cut == n and all(c.wire.ended for c in conns)  # type: ignore[attr-defined]


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


# ---- a real process ---------------------------------------------------------------------


def close_plan_ms(code: int, reason: str, attempt: int) -> int:
    """The wait before reconnecting, as `closePlan` in client_demo/stories-client.js."""
    if code == 1012:
        try:
            suggested = min(int(orjson.loads(reason)["retry_after_ms"]), 300_000)
        except (ValueError, KeyError, TypeError):
            return 500 + random.randrange(4500)
        return suggested + random.randrange(max(250, suggested // 4))
    return int(random.random() * min(30_000, 500 * 2**attempt))  # backoffDelay


@dataclass
class Obedient:
    """One client: its first socket's close, then what each reconnect attempt met."""

    url: str
    first_close: tuple[int, str] | None = None  # None: no close frame (1006)
    outcomes: list[str] = field(default_factory=list)  # "503", "refused", "reset", "101", ...
    resets_at: list[float] = field(default_factory=list)  # time.monotonic() of each "reset"
    retry_after: list[str] = field(default_factory=list)  # Retry-After of the 503s

    async def connect(self) -> websockets.ClientConnection:
        ws = await websockets.connect(self.url, open_timeout=30, max_size=None)
        while '"tray.snapshot"' not in str(await ws.recv()):
            pass
        return ws

    async def follow(self, ws: websockets.ClientConnection, stop: asyncio.Event) -> None:
        """Read until the server closes, then reconnect as the demo client does until `stop`."""
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            self.first_close = (rcvd.code, rcvd.reason) if rcvd else None
        code, reason = self.first_close or (1006, "")
        attempt = 0
        delay_ms = close_plan_ms(code, reason, attempt)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_ms / 1000)
            if stop.is_set():
                return
            await self._retry()
            attempt += 1
            delay_ms = close_plan_ms(1006, "", attempt)  # a browser sees 1006 for a refusal

    async def _retry(self) -> None:
        try:
            again = await websockets.connect(self.url, open_timeout=10)
        except websockets.InvalidStatus as exc:
            self.outcomes.append(str(exc.response.status_code))
            self.retry_after.append(exc.response.headers.get("Retry-After", ""))
        except OSError:
            self.outcomes.append("refused")
        except websockets.InvalidMessage:  # closed with no HTTP answer at all
            self.outcomes.append("reset")
            self.resets_at.append(time.monotonic())
        except (TimeoutError, websockets.InvalidHandshake) as exc:
            self.outcomes.append(type(exc).__name__)
        else:
            self.outcomes.append("101")
            await again.close()


def deaf_socket(port: int, token: str) -> socket.socket:
    """A raw client that completes the handshake, then never reads or answers again."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .encode()
    )  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return sock


def close_frame_in(sock: socket.socket, wait_s: float) -> tuple[int, str] | None:
    """Read what the server sent until it closed the TCP connection; its close frame, if any."""
    sock.settimeout(wait_s)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    found = None
    while len(data) >= 2:  # server frames are unmasked
        opcode, n, head = data[0] & 0x0F, data[1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[2:10], "big"), 10
        payload, data = data[head : head + n], data[head + n :]
        if opcode == 8 and len(payload) >= 2:
            found = (int.from_bytes(payload[:2], "big"), payload[2:].decode())
    return found


async def readyz_after_sigterm(url: str) -> tuple[int | str, httpx.Response | None]:
    """The first /readyz answer that is not 200 (or the error met), polled for at most 1 s."""
    async with httpx.AsyncClient(timeout=5) as http:
        deadline = time.monotonic() + 1.0
        while True:
            try:
                r = await http.get(url + "/readyz")
            except httpx.HTTPError as exc:
                return type(exc).__name__, None
            if r.status_code != 200 or time.monotonic() > deadline:
                return r.status_code, r
            await asyncio.sleep(0.02)


async def fresh_handshake(ws_url: str, token: str) -> tuple[int, str]:
    """A new client's handshake after SIGTERM: the HTTP status and Retry-After it saw."""
    try:
        ws = await websockets.connect(f"{ws_url}?token={token}", open_timeout=10)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, exc.response.headers.get("Retry-After", "")
    await ws.close()
    return 101, ""


async def test_sigterm_with_reconnecting_clients(tmp_path: Path) -> None:
    env = {**shared_env(), "STORIES_WS_DRAIN_TIMEOUT_S": str(DRAIN_S),
           "STORIES_WS_RECONNECT_BASE_MS": str(BASE_MS),
           "STORIES_WS_RECONNECT_SPREAD_MS": str(SPREAD_MS)}  # fmt: skip
    srv = ServerProcess(tmp_path, "drain", env)
    try:
        srv.wait_ready()
        redis_pids = [c.pid for c in psutil.Process(srv.proc.pid).children(True)
                      if "redis" in c.name()]  # fmt: skip
        auth = Authenticator(Settings(jwt_secret=JWT_SECRET, data_dir=str(tmp_path)))
        now = int(time.time())
        tokens = [auth.mint(f"drain{n:04d}", now) for n in range(CLIENTS + 2)]
        clients = [Obedient(f"{srv.endpoint.ws_url}?token={t}") for t in tokens[:CLIENTS]]
        gate = asyncio.Semaphore(32)

        async def first(c: Obedient) -> websockets.ClientConnection:
            async with gate:
                return await c.connect()

        socks = await asyncio.gather(*(first(c) for c in clients))
        deaf = deaf_socket(srv.port, tokens[CLIENTS])
        await asyncio.sleep(0.5)  # the deaf socket's sign-in, hello and snapshot
        stop = asyncio.Event()
        follows = [asyncio.create_task(c.follow(s, stop)) for c, s in zip(clients, socks, strict=True)]  # fmt: skip
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        ready, (status, retry_after) = await asyncio.gather(
            readyz_after_sigterm(srv.endpoint.url),
            fresh_handshake(srv.endpoint.ws_url, tokens[CLIENTS + 1]),
        )
        srv.proc.send_signal(signal.SIGTERM)  # a second one (supervisor + group kill): ignored
        assert ready[0] == 503 and ready[1] is not None, ready
        assert ready[1].headers["Retry-After"], ready[1].headers
        assert ready[1].json()["checks"]["accepting"] == "draining", ready[1].text
        assert status == 503 and int(retry_after) >= 1, (status, retry_after)
        deaf_close = await asyncio.to_thread(close_frame_in, deaf, DRAIN_S + MARGIN_S)
        while srv.proc.poll() is None and time.monotonic() < started + DRAIN_S + MARGIN_S:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert srv.proc.poll() is not None, f"still running {elapsed:.1f} s after SIGTERM"
        assert srv.proc.returncode == -signal.SIGTERM, srv.output()
        await asyncio.sleep(0.3)  # reconnects now meet a closed port
        stop.set()
        await asyncio.gather(*follows)

        closes = [c.first_close for c in clients] + [deaf_close]
        assert all(c is not None for c in closes), f"{closes.count(None)} sockets ended 1006"
        for code, reason in closes:  # type: ignore[misc]
            assert code == 1012, (code, reason)
            assert BASE_MS <= orjson.loads(reason)["retry_after_ms"] < BASE_MS + SPREAD_MS
        outcomes = [o for c in clients for o in c.outcomes]
        assert "101" not in outcomes, f"{outcomes.count('101')} reconnects accepted while draining"
        assert set(outcomes) <= {"503", "refused", "reset"}, set(outcomes)
        # a connection closed unanswered is one taken as uvicorn stopped listening, which
        # is after the drain's deadline (the deaf socket holds it until then), never during
        resets = [t - started for c in clients for t in c.resets_at]
        assert all(t >= DRAIN_S - 0.5 for t in resets), sorted(resets)[:5]
        assert outcomes.count("503") >= CLIENTS // 2, "most came back during the drain"
        assert all(int(r) >= 1 for c in clients for r in c.retry_after)
        still = [p for p in redis_pids
                 if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        assert not still, "the embedded redis-server outlived the server"
        deaf.close()
    finally:
        srv.stop()


async def test_sigterm_to_the_supervisor_drains_every_worker(tmp_path: Path) -> None:
    """`--workers 2`: uvicorn's supervisor passes SIGTERM on; each worker drains its own sockets."""
    env = {**shared_env(), "STORIES_WS_DRAIN_TIMEOUT_S": str(DRAIN_S),
           "STORIES_WS_RECONNECT_BASE_MS": str(BASE_MS),
           "STORIES_WS_RECONNECT_SPREAD_MS": str(SPREAD_MS)}  # fmt: skip
    srv = ServerProcess(tmp_path, "workers", env, "--workers", "2")
    try:
        srv.wait_ready()
        auth = Authenticator(Settings(jwt_secret=JWT_SECRET, data_dir=str(tmp_path)))
        now = int(time.time())
        clients = [Obedient(f"{srv.endpoint.ws_url}?token={auth.mint(f'wk{n:03d}', now)}")
                   for n in range(80)]  # fmt: skip
        socks = [await c.connect() for c in clients]
        assert len(_worker_of_sockets(srv)) == 2, "sockets did not spread over both workers"
        stop = asyncio.Event()
        follows = [asyncio.create_task(c.follow(s, stop)) for c, s in zip(clients, socks, strict=True)]  # fmt: skip
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        while srv.proc.poll() is None and time.monotonic() < started + DRAIN_S + MARGIN_S:
            await asyncio.sleep(0.05)
        assert srv.proc.poll() is not None, "still running after the drain's bound"
        assert srv.proc.returncode in (0, -signal.SIGTERM), srv.output()  # supervisor: 0
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*follows)
        for close in [c.first_close for c in clients]:  # the drain's 1012, not uvicorn's bare one
            assert close is not None and close[0] == 1012, close
            assert BASE_MS <= orjson.loads(close[1])["retry_after_ms"] < BASE_MS + SPREAD_MS
        assert "101" not in [o for c in clients for o in c.outcomes]
    finally:
        srv.stop()


async def test_sigterm_repeated_until_the_process_ends(tmp_path: Path) -> None:
    """A supervisor that keeps sending SIGTERM (every 5 ms) neither cuts the drain short nor
    kills the process before it has stopped its embedded Redis."""
    env = {**shared_env(), "STORIES_WS_DRAIN_TIMEOUT_S": "1"}
    srv = ServerProcess(tmp_path, "repeat", env)
    try:
        srv.wait_ready()
        redis_pids = [c.pid for c in psutil.Process(srv.proc.pid).children(True)
                      if "redis" in c.name()]  # fmt: skip
        assert redis_pids, "no embedded redis-server"
        auth = Authenticator(Settings(jwt_secret=JWT_SECRET, data_dir=str(tmp_path)))
        now = int(time.time())
        clients = [Obedient(f"{srv.endpoint.ws_url}?token={auth.mint(f'rp{n:02d}', now)}")
                   for n in range(20)]  # fmt: skip
        socks = [await c.connect() for c in clients]
        stop = asyncio.Event()
        follows = [asyncio.create_task(c.follow(s, stop)) for c, s in zip(clients, socks, strict=True)]  # fmt: skip
        deadline = time.monotonic() + 1 + MARGIN_S
        while srv.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                srv.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.005)
        assert srv.proc.poll() is not None, "still running after the drain's bound"
        assert srv.proc.returncode == -signal.SIGTERM, srv.output()
        stop.set()
        await asyncio.gather(*follows)
        assert [c.first_close and c.first_close[0] for c in clients] == [1012] * len(clients)
        still = [p for p in redis_pids
                 if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        assert not still, f"the embedded redis-server outlived the server:\n{srv.output()}"
    finally:
        srv.stop()
