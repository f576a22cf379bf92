"""The `/ws` endpoint: a thin adapter between a Starlette WebSocket and the hub.

Sequence (PROTOCOL.md): accept; authenticate by `?token=` or a first frame
`{"op": "auth", "token"}` within `ws_auth_timeout_s` (else close 4001); send
`hello`; subscribe and queue `tray.snapshot` (the hub); then read client ops
until the socket closes. Malformed frames and floods close with 1008; frames
over `ws_max_frame_bytes` close with 1009 (uvicorn enforces `ws_max_size`).
While the process drains (SIGTERM) a handshake is refused before accept: HTTP
503 with Retry-After (`drain.refuse`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

import redis.exceptions
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from server import drain, frames
from server.auth import Principal
from server.connection import Connection
from server.errors import StoriesError, Unauthorized
from server.services import Services
from server.wire import Wire, wire_for

log = logging.getLogger("stories.ws")


class RateGate:
    """Token bucket for client ops: `rate` per second, bursts up to `2 * rate`."""

    __slots__ = ("at", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = 2 * rate
        self.at = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


async def _authenticate(ws: WebSocket, svc: Services) -> Principal:
    """The caller, from `?token=` or a first `auth` frame. Raises Unauthorized.

    The query string is parsed here, not through `ws.query_params`, which the
    socket would keep (with the token) for as long as it is open.
    """
    query = parse_qs(ws.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    token = query.get("token", [None])[0]
    if token == "":
        raise Unauthorized("empty token")
    if token is None:
        try:
            text = await asyncio.wait_for(ws.receive_text(), svc.settings.ws_auth_timeout_s)
            op = frames.parse_op(text)
        except (TimeoutError, frames.ProtocolError, KeyError):
            raise Unauthorized("authenticate with ?token= or a first auth frame") from None
        if op.name != "auth":
            raise Unauthorized("the first frame must be auth")
        token = op.arg
    return svc.auth.verify(token)


async def _sign_in(ws: WebSocket, svc: Services) -> dict[str, Any]:
    """The caller's User; the token and its claims go once it is known (not kept per socket)."""
    principal = await _authenticate(ws, svc)
    return await svc.store.users.ensure(principal.user_id, principal.claims)


async def _close(ws: WebSocket, code: int, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        await ws.close(code, reason[:120])


def serve(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """The ASGI entry of `/ws` (see `app.StoriesApp`): `send` is the server's own."""
    ws = WebSocket(scope, receive, send)
    return ws_endpoint(ws, wire_for(ws, send))


async def ws_endpoint(ws: WebSocket, wire: Wire) -> None:
    """One socket's life: accept, sign in, hello, attach to the hub, read ops, detach."""
    svc: Services = ws.app.state.services
    hub = svc.hub
    if hub.draining:  # before accept and any sign-in work: HTTP 503 with Retry-After
        await drain.refuse(ws, svc.settings)
        return
    await ws.accept()

    async def close(code: int, reason: str) -> None:
        await _close(ws, code, reason)

    hub.signing_in.add(close)  # a drain closes it too (1012 with a wait), not only uvicorn
    try:
        user = await _sign_in(ws, svc)
    except (StoriesError, WebSocketDisconnect) as exc:
        await _close(ws, frames.WS_4001_UNAUTHORIZED, getattr(exc, "detail", "unauthorized"))
        return
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        await _close(ws, frames.WS_1013_TRY_AGAIN_LATER, "storage unavailable; retry shortly")
        return
    finally:
        hub.signing_in.discard(close)
    conn = Connection(user, wire, close, svc.settings.ws_send_queue_bytes)
    hub.enqueue(conn, frames.encode("hello", svc.store.clock.now_ms(), user=user, session_id=conn.id,
                                    server_time=frames.rfc3339(svc.store.clock.now_ms())))  # fmt: skip
    try:
        await hub.attach(conn)
        await _read_ops(ws, svc, conn)
    except WebSocketDisconnect:
        pass
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        await _close(ws, frames.WS_1013_TRY_AGAIN_LATER, "storage unavailable; retry shortly")
    finally:
        await hub.detach(conn)


async def _read_ops(ws: WebSocket, svc: Services, conn: Connection) -> None:
    gate = RateGate(svc.settings.ws_ops_per_second)
    while not conn.closing:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
        if len(text) > svc.settings.ws_max_frame_bytes:
            await _close(ws, frames.WS_1009_MESSAGE_TOO_BIG, "frame too big")
            return
        if not gate.allow():
            await _close(ws, frames.WS_1008_POLICY_VIOLATION, "too many frames")
            return
        try:
            op = frames.parse_op(text)
        except frames.ProtocolError as exc:
            await _close(ws, frames.WS_1008_POLICY_VIOLATION, str(exc))
            return
        if op.name == "auth":  # only ever the first frame
            await _close(ws, frames.WS_1008_POLICY_VIOLATION, "already signed in")
            return
        await _handle(svc, conn, op)


async def _handle(svc: Services, conn: Connection, op: frames.Op) -> None:
    """Run one client op. A refused op answers an `error` frame; a bug closes 1011, logged.

    Redis being down propagates (the endpoint closes 1013), as over HTTP (503).
    """
    now = svc.store.clock.now_ms()
    if op.name == "ping":
        svc.hub.enqueue(conn, frames.encode("pong", now))
    elif op.name == "seen" and op.arg:
        try:
            await svc.seen.mark_seen(conn.user, op.arg)
        except StoriesError as exc:
            svc.hub.enqueue(conn, frames.encode("error", now, op="seen", item=op.arg, status=exc.status,
                                                detail=exc.detail))  # fmt: skip
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            raise
        except Exception:  # the socket's 500: never a dropped connection without a close frame
            log.exception("unhandled error on a %s op", op.name)
            conn.closing = True  # nothing more is sent or read on it
            await conn.close(frames.WS_1011_INTERNAL_ERROR, "server error")
