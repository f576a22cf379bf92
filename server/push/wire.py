"""Writing server frames to one client socket: the hub's only door to the network.

ASGI hands an application text as `str`, so a server running the standard
`websocket.send` path encodes and frames every message once per recipient.
Fan-out sends the same event to thousands of sockets, and DESIGN.md asks for
one encoding per process; so under uvicorn's sans-I/O WebSocket protocol (what
`stories serve` runs) the hub writes each shared `Encoded.frame` straight to the
socket's transport. Anywhere else (another ASGI server, Starlette's TestClient)
it falls back to `websocket.send`. Measured on this kind of machine: see
`docs/benchmarks.md`, fan-out.

The direct wire keeps the guarantees of uvicorn's own `send`: nothing is
written once a close frame was sent or the socket is gone, and while the
transport's buffer is over its high-water mark (uvicorn's `writable` event is
clear) the write waits, so backpressure reaches the hub's bounded outbox and
never grows the transport's buffer. With permessage-deflate negotiated (off by
default, `ws_per_message_deflate`) each frame is compressed per connection
through the `websockets` protocol object, as uvicorn would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from starlette.types import Send
from starlette.websockets import WebSocket

from server.core.frames import Encoded
from server.push.sender import start_send

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - another uvicorn layout: the ASGI wire only
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


class WireClosed(ConnectionError):
    """The socket is closing or gone; nothing more can be written to it."""


class Wire(Protocol):
    """Where one connection's frames go.

    `send(payload)` writes now and returns None, or returns the task that
    finishes the write once the socket drains (backpressure). Raises
    `WireClosed` (or the server's own disconnect error) when the socket is gone.
    """

    def send(self, payload: Encoded) -> asyncio.Task[None] | None: ...

    def gone(self) -> bool:
        """Whether the socket's connection is closed (as far as this wire can tell)."""
        ...

    def end(self) -> None:
        """Close the connection now, for a drain's deadline: whatever it has not answered."""
        ...


class AsgiWire:
    """Any ASGI server: one `websocket.send` text message per payload."""

    __slots__ = ("_send_text",)

    def __init__(self, send_text: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        self._send_text = send_text

    def send(self, payload: Encoded) -> asyncio.Task[None] | None:
        return start_send(self._send_text(payload.data.decode()))

    def gone(self) -> bool:
        return True  # the ASGI server owns the connection; nothing to wait for here

    def end(self) -> None:
        return None


class UvicornWire:
    """uvicorn's sans-I/O WebSocket protocol: shared frames written to its transport.

    Built after the handshake, when the extensions in use are settled.
    """

    __slots__ = ("_deflate", "_proto", "_transport")

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        self._transport = proto.transport
        self._deflate = bool(proto.conn.extensions)  # permessage-deflate negotiated

    def send(self, payload: Encoded) -> asyncio.Task[None] | None:
        proto, transport = self._proto, self._transport
        if proto.close_sent or transport.is_closing():  # uvicorn's own guard before a ping
            raise WireClosed("socket closed")
        # `writable` is clear only while the transport holds more than its high-water mark
        if transport.get_write_buffer_size() and not proto.writable.is_set():
            return asyncio.get_running_loop().create_task(self._send_when_writable(payload))
        if self._deflate:  # compressed per connection, through the protocol object
            proto.conn.send_text(payload.data)
            transport.write(b"".join(proto.conn.data_to_send()))
        else:
            transport.write(payload.frame)
        return None

    def gone(self) -> bool:
        return bool(self._proto.disconnected)  # set by uvicorn's connection_lost

    def end(self) -> None:
        """FIN once everything written has left (the close frame too); else abort (RST)."""
        if self._transport.get_write_buffer_size():
            self._transport.abort()
        else:
            self._transport.close()

    async def _send_when_writable(self, payload: Encoded) -> None:
        while not self._proto.writable.is_set():
            await self._proto.writable.wait()
        self.send(payload)  # writable: writes now, or raises if the socket closed meanwhile


def wire_for(ws: WebSocket, server_send: Send) -> Wire:
    """The fastest correct wire for `ws`: direct under uvicorn sans-I/O, else ASGI.

    `server_send` is the ASGI server's own `send` (not wrapped by middleware),
    whose bound instance names the protocol.
    """
    proto = getattr(server_send, "__self__", None)
    if WebSocketsSansIOProtocol is not None and isinstance(proto, WebSocketsSansIOProtocol):
        return UvicornWire(proto)
    return AsgiWire(ws.send_text)
