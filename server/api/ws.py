"""The `/ws` endpoint: a thin adapter between a Starlette WebSocket and the hub.

Sequence (PROTOCOL.md): accept; authenticate by `?token=` or a first frame
`{"op": "auth", "token"}` within `ws_auth_timeout_s` (else close 4001); send
`hello`; subscribe and queue `tray.snapshot` (the hub); then read client ops
until the socket closes. Malformed frames and floods close with 1008; frames
over `ws_max_frame_bytes` close with 1009 (uvicorn enforces `ws_max_size`).
While the process drains (SIGTERM) a handshake is refused before accept: HTTP
503 with Retry-After (`refuse`).
Signing in passes the hub's sign-in gate (`server/push/admission.py`): when too many
sockets sign in at once the socket closes 1013 with `{"retry_after_ms"}`, as
it does when Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import redis.exceptions
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.api.responses import problem_response
from server.core import codes, frames
from server.core.auth import Principal
from server.core.errors import ProtocolError, Restarting, StoriesError, Unauthorized
from server.core.settings import Settings
from server.push import drain
from server.push.admission import Busy
from server.push.connection import Connection
from server.push.retry import retry_reason
from server.push.wire import Wire, wire_for

if TYPE_CHECKING:
    from server.services import Services

log = logging.getLogger("stories.ws")


async def refuse(ws: WebSocket, settings: Settings) -> None:
    """Answer a WebSocket handshake during a drain, before accepting it or signing anyone in.

    With the ASGI `websocket.http.response` extension (uvicorn has it) the
    client gets HTTP 503, `Retry-After` and a problem+json body. Without it the
    socket is closed before accept, which servers answer with HTTP 403.
    """
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        exc = Restarting(
            "the server is restarting; connect again", retry_after_s=drain.retry_after_s(settings)
        )
        await ws.send_denial_response(problem_response(exc))
    else:
        await ws.close(codes.WS_1012_SERVICE_RESTART)


MAX_REASON_BYTES = 123  # RFC 6455 section 5.5: a control frame's payload is at most 125 bytes


def close_reason(reason: str) -> str:
    """`reason` cut to what a close frame can carry: 123 bytes of UTF-8, whole characters.

    A reason echoing client input (an unknown op's name) may be non-ASCII; cut by
    characters it could exceed the frame, and the close would fail: a 1006, not
    the documented code.
    """
    data = reason.encode()
    return (
        reason if len(data) <= MAX_REASON_BYTES else data[:MAX_REASON_BYTES].decode(errors="ignore")
    )


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
        except (TimeoutError, ProtocolError, KeyError):
            raise Unauthorized("authenticate with ?token= or a first auth frame") from None
        if op.name != "auth":
            raise Unauthorized("the first frame must be auth")
        token = op.arg
    return svc.auth.verify(token)


class _Socket(WebSocket):
    """Starlette's WebSocket with a close that never raises (the socket may be gone).

    A bound method of it is the `Connection.close` the hub calls: one small
    object per socket where a `functools.partial` costs three.
    """

    async def close_quietly(self, code: int, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            await self.close(code, close_reason(reason))


def serve(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """The ASGI entry of `/ws` (see `app.StoriesApp`): `send` is the server's own."""
    ws = _Socket(scope, receive, send)
    return ws_endpoint(ws, wire_for(ws, send), receive)


async def ws_endpoint(ws: _Socket, wire: Wire, receive: Receive) -> None:
    """One socket's life: accept, sign in, hello, attach to the hub, read ops, detach.

    An idle socket keeps this coroutine's frame for hours, so the read loop is
    here (not one frame deeper) and reads the server's `receive` directly
    (Starlette's `WebSocket.receive` would be another frame per socket).
    """
    svc: Services = ws.app.state.services
    hub = svc.hub
    if hub.draining:  # before accept and any sign-in work: HTTP 503 with Retry-After
        await refuse(ws, svc.settings)
        return
    await ws.accept()
    close = ws.close_quietly
    hub.signing_in.add(close)  # a drain closes it too (1012 with a wait), not only uvicorn
    try:
        principal = await _authenticate(ws, svc)
    except (StoriesError, WebSocketDisconnect) as exc:
        hub.signing_in.discard(close)
        await ws.close_quietly(codes.WS_4001_UNAUTHORIZED, getattr(exc, "detail", "unauthorized"))
        return
    conn = Connection({"id": principal.user_id}, wire, close, svc.settings.ws_send_queue_bytes)
    try:
        signed_in = await _sign_in(ws, svc, conn, principal.claims)
        del principal  # the token's claims are not kept per socket
        if signed_in:
            gate: RateGate | None = None  # made at the first frame: idle sockets never need one
            while not conn.closing:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                gate = gate or RateGate(svc.settings.ws_ops_per_second)
                if not await _on_frame(ws, svc, conn, gate, message):
                    break
    except WebSocketDisconnect:
        pass
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        reason = retry_reason(svc.settings, "storage unavailable")
        await ws.close_quietly(codes.WS_1013_TRY_AGAIN_LATER, reason)
    finally:
        hub.signing_in.discard(close)
        await hub.detach(conn)


async def _sign_in(ws: _Socket, svc: Services, conn: Connection, claims: dict[str, Any]) -> bool:
    """Through the sign-in gate: the hub's sign-in, `hello`, then the snapshot (`Hub.attach`).

    False when the socket is closed instead: 1013 with `{"retry_after_ms"}` when
    too many sockets are signing in (`server/push/admission.py`), 1012 when draining.
    Redis errors propagate (the endpoint closes 1013 with a wait too).
    """
    hub = svc.hub
    try:
        async with hub.gate.admit():
            hub.signing_in.discard(conn.close)  # from now on the drain finds it in hub.conns
            if not await hub.sign_in(conn, claims):
                return False
            now = svc.store.clock.now_ms()
            hub.enqueue(conn, frames.encode("hello", now, user=conn.user, session_id=conn.id,
                                            server_time=frames.rfc3339(now)))  # fmt: skip
            await hub.attach(conn)
    except Busy as exc:
        await ws.close_quietly(codes.WS_1013_TRY_AGAIN_LATER, retry_reason(svc.settings, str(exc)))
        return False
    return not conn.closing


async def _on_frame(
    ws: _Socket, svc: Services, conn: Connection, gate: RateGate, message: Message
) -> bool:
    """Check and run one client frame; False when it closed the socket."""
    text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
    if len(text) > svc.settings.ws_max_frame_bytes:
        await ws.close_quietly(codes.WS_1009_MESSAGE_TOO_BIG, "frame too big")
        return False
    if not gate.allow():
        await ws.close_quietly(codes.WS_1008_POLICY_VIOLATION, "too many frames")
        return False
    try:
        op = frames.parse_op(text)
    except ProtocolError as exc:
        await ws.close_quietly(exc.close_code, exc.detail)
        return False
    if op.name == "auth":  # only ever the first frame
        await ws.close_quietly(codes.WS_1008_POLICY_VIOLATION, "already signed in")
        return False
    await _handle(svc, conn, op)
    return True


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
            await conn.close(codes.WS_1011_INTERNAL_ERROR, "server error")
