"""Graceful restarts: on SIGTERM refuse new sockets, flush, close every socket with 1012, in time.

From the signal on (`Drain.run`, chained in front of uvicorn's own handler by
`install`):

1. The hub is marked draining. `/readyz` answers 503 at once, and a new
   WebSocket handshake gets HTTP 503 with `Retry-After` before any sign-in
   work (`refuse`). The listening socket stays open until uvicorn's own
   shutdown, so a load balancer sees the 503s (a refused connect would say
   less) and clients that come back early cost one HTTP exchange each.
2. Sockets still signing in are closed with 1012 and a wait.
3. Each attached socket, as soon as its queued frames are out (a slow reader
   delays only itself, and at most `FLUSH_SHARE` of `ws_drain_timeout_s`),
   leaves the hub (no per-socket pub/sub UNSUBSCRIBE: the broker stops next)
   and gets its close frame — 1012 with `{"retry_after_ms": n}`, n jittered
   (`retry_reason`) — written in batches of `CLOSE_BATCH` per event-loop
   iteration, with no await per socket.
4. The drain waits for the clients' closing handshakes until
   `ws_drain_timeout_s` after the signal; a socket that has not answered by
   then is closed (FIN after its close frame) or, when it cannot even take its
   close frame (a full send buffer), aborted. So no socket holds the drain.

Then uvicorn's handler runs: it stops listening and, within
`UVICORN_GRACE_S`, shuts the rest down; the lifespan's `Services.close`
stops captures, the broker and Redis by `Budget.teardown_by`, and the CLI
stops the embedded Redis. The whole stop is meant to end within
`ws_drain_timeout_s + TEARDOWN_S` (measured: docs/benchmarks.md, drain).

Why the socket phase can be this cheap: under uvicorn's sans-I/O protocol a
close is a frame written to the transport (`websocket.close` suspends only
while the transport is over its high-water mark), so a batch of closes is a
loop of writes; `sender.start_send` steps each close coroutine in place and
gives a task only to a close that has to wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from server.core import codes
from server.core.settings import Settings
from server.push.connection import Close, Connection
from server.push.retry import retry_reason
from server.push.sender import start_send

log = logging.getLogger("stories.drain")

FLUSH_SHARE = 0.5  # share of ws_drain_timeout_s that may go to flushing queued frames
CLOSE_BATCH = 500  # close frames written per event-loop iteration
POLL_S = 0.02  # how often the flush and the closing handshakes are checked
TEARDOWN_S = 2.0  # after the sockets: uvicorn's own shutdown, captures, broker, Redis
UVICORN_GRACE_S = 1  # uvicorn's timeout_graceful_shutdown: it starts once the sockets are done


class Clearable(Protocol):
    """The hub's index of channels, as far as a drain needs it: dropped at once."""

    def clear(self) -> None: ...


class Drainable(Protocol):
    """What a drain needs of the hub: its flag, its sockets and the index of their channels."""

    draining: bool
    conns: set[Connection]
    signing_in: set[Close]

    @property
    def interest(self) -> Clearable: ...


@dataclass(frozen=True)
class Budget:
    """The deadlines of one drain, in `time.monotonic()` seconds.

    `started` is when the drain began (the signal); `timeout_s` is
    `ws_drain_timeout_s`.
    """

    started: float
    timeout_s: float

    @property
    def flush_by(self) -> float:
        return self.started + self.timeout_s * FLUSH_SHARE

    @property
    def sockets_by(self) -> float:
        return self.started + self.timeout_s

    @property
    def teardown_by(self) -> float:
        return self.sockets_by + TEARDOWN_S

    def left(self, cap_s: float, now: float | None = None) -> float:
        """Seconds a teardown step may take: what is left until `teardown_by`, at most `cap_s`.

        Never less than 0.1 s, so a step that is already late still gets to try.
        """
        now = time.monotonic() if now is None else now
        return max(0.1, min(cap_s, self.teardown_by - now))


def retry_after_s(settings: Settings) -> int:
    """`Retry-After` (whole seconds, at least 1) of a handshake refused while draining."""
    return max(1, math.ceil(settings.ws_reconnect_base_ms / 1000))


class Drain:
    """The shutdown of one process's sockets; `run()` once, from the signal or the lifespan."""

    def __init__(self, hub: Drainable, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings
        self.budget: Budget | None = None
        self.closed = 0  # sockets sent 1012 by this drain
        self.cut = 0  # of those, ended at the deadline without a closing handshake
        self._task: asyncio.Task[None] | None = None

    def readiness(self) -> str:
        """For `/readyz`: "ok", or "draining" from the first moment of a drain."""
        return "draining" if self.hub.draining else "ok"

    async def run(self) -> None:
        """Drain now, or wait for the drain already under way. Never raises (logs instead)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")
        await self._task

    def teardown_left(self, cap_s: float) -> float:
        """Seconds the next teardown step may take (see `Budget.left`)."""
        if self.budget is None:
            return cap_s
        return self.budget.left(cap_s)

    async def _run(self) -> None:
        hub = self.hub
        hub.draining = True
        self.budget = budget = Budget(time.monotonic(), self.settings.ws_drain_timeout_s)
        try:
            waits = [t for c in list(hub.signing_in) if (t := self._close(c)) is not None]
            conns = list(hub.conns)
            waits += await self._close_when_flushed(conns, budget.flush_by)
            hub.conns.clear()  # any left (the dispatcher holds this same set)
            hub.interest.clear()  # no per-socket UNSUBSCRIBE: the broker stops next
            open_ = await _until_closed(conns, budget.sockets_by)
            for conn in open_:
                conn.wire.end()
            self.cut = len(open_)
            if waits:  # closes blocked on a full buffer: they give up once the socket is gone
                await asyncio.wait(waits, timeout=0.5)
        except Exception:
            log.exception("drain failed")
        took = time.monotonic() - budget.started
        level = logging.WARNING if self.cut else logging.INFO
        log.log(level, "drain: %d sockets closed 1012 in %.2f s, %d cut at the deadline",
                self.closed, took, self.cut)  # fmt: skip

    def _close(self, close: Close) -> asyncio.Task[None] | None:
        """Write one 1012 close now; the task that finishes it if the socket must drain first."""
        self.closed += 1
        return start_send(
            _awaited(close(codes.WS_1012_SERVICE_RESTART, retry_reason(self.settings)))
        )

    async def _close_when_flushed(
        self, conns: list[Connection], by: float
    ) -> list[asyncio.Task[None]]:
        """Close each connection once its queued frames are out; at `by`, the rest anyway.

        So one slow reader delays only its own close. Returns the closes that wait.
        """
        waits: list[asyncio.Task[None]] = []
        pending = conns
        while pending:
            late = time.monotonic() >= by
            ready = pending if late else [c for c in pending if not _busy(c)]
            waits += await self._close_all(ready)
            pending = [c for c in pending if not c.closing]
            if pending:
                await asyncio.sleep(POLL_S)
        return waits

    async def _close_all(self, conns: list[Connection]) -> list[asyncio.Task[None]]:
        """1012 to every connection, `CLOSE_BATCH` per loop iteration; the closes that wait."""
        waits: list[asyncio.Task[None]] = []
        for start in range(0, len(conns), CLOSE_BATCH):
            for conn in conns[start : start + CLOSE_BATCH]:
                _release(self.hub, conn)
                if (task := self._close(conn.close)) is not None:
                    waits.append(task)
            await asyncio.sleep(0)  # read the clients' answers between batches
        return waits


async def _awaited(step: Awaitable[None]) -> None:
    await step


def _busy(conn: Connection) -> bool:
    """Frames still queued for `conn`, or a send of them in flight."""
    return bool(len(conn.outbox) or conn.sending)


def _release(hub: Drainable, conn: Connection) -> None:
    """Take `conn` out of the hub; stop its timers and any blocked send; queue nothing more.

    Its endpoint still calls `hub.detach` when the socket ends; that finds the
    connection gone and does nothing, so no per-socket UNSUBSCRIBE reaches
    Redis during the drain (the drain clears `hub.interest` once at the end).
    """
    hub.conns.discard(conn)
    conn.closing = True  # enqueue drops frames; its reader loop ends
    if conn.count_timer:
        conn.count_timer.cancel()
    conn.outbox.take()
    if conn.sending:
        conn.sending.cancel()


async def _until_closed(conns: list[Connection], by: float) -> list[Connection]:
    """Wait until every connection's socket is gone, or until `by`; those still open."""
    open_ = [c for c in conns if not c.wire.gone()]
    while open_ and time.monotonic() < by:
        await asyncio.sleep(POLL_S)
        open_ = [c for c in open_ if not c.wire.gone()]
    return open_


def install(drain: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Chain `drain()` (a coroutine function) in front of the current SIGTERM/SIGINT handlers.

    The first signal starts the drain; once it is done the previous handler
    (uvicorn's) runs with that signal, as before. A signal during the drain:
    SIGTERM is ignored (the drain is bounded; a supervisor and a process-group
    kill may both send one), a second Ctrl+C (SIGINT) hands over to the
    previous handler at once (uvicorn starts its own shutdown; another Ctrl+C
    forces it). Returns an uninstall function, which gives the signals back
    to those handlers. Does nothing outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    installed: list[tuple[int, Any]] = []
    started: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(sig: int = sig, previous: Any = previous) -> None:
            if started:
                if sig == signal.SIGINT:
                    log.warning("second Ctrl+C while draining: handed to uvicorn")
                    previous(sig, None)
                elif signal.SIGTERM not in started[1:]:  # once: a supervisor may repeat it
                    log.warning("SIGTERM while draining: ignored")
                started.append(sig)
                return
            started.append(sig)
            task = loop.create_task(drain())
            task.add_done_callback(lambda _t: previous(sig, None))

        loop.add_signal_handler(sig, handler)
        installed.append((sig, previous))

    def uninstall() -> None:
        # give the signals back to the handlers found (uvicorn's): asyncio alone would reset
        # them to the default, and a SIGTERM during the rest of the shutdown would kill the
        # process before the CLI stops the embedded Redis
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)

    return uninstall
