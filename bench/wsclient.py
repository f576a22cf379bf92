"""A minimal WebSocket client (RFC 6455), cheap enough for thousands per process.

The push benchmarks (`fanout.py`, `seen.py`, `storms.py`) hold thousands of
sockets from a few client processes; a library client costs a task and
several objects per socket, this one an asyncio Protocol that parses frames
in place. It answers pings, reports pongs, and keeps the close code and reason.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any


class WSClient(asyncio.Protocol):
    """One client WebSocket on an asyncio transport: handshake, frame parsing, pong, close.

    Server frames are parsed in place (no task per message, no per-frame
    coroutine), so a client process can follow thousands of sockets while
    leaving most of the machine to the server. `on_text(payload, now)` gets
    every text/binary message with the wall-clock time its bytes arrived.
    """

    def __init__(self, host: str, path: str) -> None:
        self.host, self.path = host, path
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = False
        self.closed = False
        self.close_code: int | None = None  # None: no close frame came (a bare drop)
        self.close_reason = ""
        self.http_status = ""  # the status line when the handshake was refused
        self.frag: list[bytes] | None = None
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.open = False
        if not self.ready.done():
            self.ready.set_result(False)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.buf:  # a partial frame (or handshake) is pending; usually data starts fresh
            self.buf += data
            buf = bytes(self.buf)
            self.buf.clear()
        else:
            buf = data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf += buf
                return
            status = buf[: buf.find(b"\r\n")]
            buf = buf[end + 4 :]
            if b" 101 " not in status:
                self.http_status = status.decode(errors="replace")
                self.fail(self.http_status)
                return
            self.open = True
        off, n = 0, len(buf)
        while n - off >= 2:
            b0, length = buf[off], buf[off + 1] & 0x7F
            head = 2
            if length == 126:
                if n - off < 4:
                    break
                length, head = int.from_bytes(buf[off + 2 : off + 4], "big"), 4
            elif length == 127:
                if n - off < 10:
                    break
                length, head = int.from_bytes(buf[off + 2 : off + 10], "big"), 10
            end = off + head + length
            if end > n:
                break
            payload = buf[off + head : end]
            off = end
            opcode = b0 & 0x0F
            if opcode in (1, 2):
                if b0 & 0x80:
                    self.on_text(payload, now)
                else:
                    self.frag = [payload]
            elif opcode == 0 and self.frag is not None:
                self.frag.append(payload)
                if b0 & 0x80:
                    whole, self.frag = b"".join(self.frag), None
                    self.on_text(whole, now)
            elif opcode == 9:
                self.send_frame(0xA, payload)
            elif opcode == 10:
                self.on_pong(payload, now)
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode(errors="replace")
                self.send_frame(0x8, payload[:2])
                self.closed = True
                if self.transport is not None:
                    self.transport.close()
                return
        if off < n:
            self.buf += buf[off:]

    # API
    def on_text(self, payload: bytes, now: float) -> None:
        """Override: one whole message."""

    def on_pong(self, payload: bytes, now: float) -> None:
        """Override: a pong (the answer to a `send_frame(0x9, payload)`)."""

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """A masked client frame (RFC 6455 5.3)."""
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 1 << 16:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.transport.write(head + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.close()


async def ws_connect(
    factory: Any, port: int, timeout_s: float = 20.0, host: str = "127.0.0.1"
) -> WSClient:
    """Open `factory()`'s client on 127.0.0.1:`port` and wait until it says it is ready."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout_s)
    try:
        if not await asyncio.wait_for(asyncio.shield(client.ready), timeout_s):
            raise ConnectionError(f"closed before ready (code {client.close_code})")
    except BaseException:
        client.close()
        raise
    return client
