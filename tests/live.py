"""A real uvicorn server in a background thread, and real WebSocket clients for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
import websockets

from server.app import create_app
from server.core.clock import Clock
from server.core.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving `create_app(settings, clock)` on 127.0.0.1:<free port> in a thread."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.app = create_app(settings, clock)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                ws="websockets-sansio", ws_max_size=settings.ws_max_frame_bytes,
                                ws_per_message_deflate=settings.ws_per_message_deflate)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class Client:
    """One user: an HTTP client with their token and any number of sockets."""

    def __init__(self, server: LiveServer, handle: str) -> None:
        self.server = server
        r = httpx.post(server.url + "/api/v1/auth/dev-login", json={"handle": handle})
        r.raise_for_status()
        self.token = r.json()["token"]
        self.user = r.json()["user"]
        self.id = self.user["id"]
        self.http = httpx.AsyncClient(
            base_url=server.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    async def socket(self) -> Socket:
        ws = await websockets.connect(
            f"{self.server.ws_url}?token={self.token}", max_size=None, max_queue=1024
        )
        sock = Socket(ws)
        hello = await sock.next("hello")
        assert hello["user"]["id"] == self.id
        sock.snapshot = (await sock.next("tray.snapshot"))["items"]
        return sock

    async def post_photo(self, name: str = "rocket.jpg", **data: str) -> dict[str, Any]:
        body = Path(f"tests/media/{name}").read_bytes()
        r = await self.http.post("/stories", files={"media": (name, body)}, data=data)
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def close(self) -> None:
        await self.http.aclose()


class Socket:
    """A websockets client that unpacks array frames into single events."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buffer: list[dict[str, Any]] = []
        self.snapshot: list[dict[str, Any]] = []
        self.seen_events: list[dict[str, Any]] = []

    async def recv(self, wait_s: float = 5.0) -> dict[str, Any]:
        while not self.buffer:
            data = orjson.loads(await asyncio.wait_for(self.ws.recv(), wait_s))
            self.buffer.extend(data if isinstance(data, list) else [data])
        event = self.buffer.pop(0)
        self.seen_events.append(event)
        return event

    async def next(self, type_: str, wait_s: float = 5.0, **match: Any) -> dict[str, Any]:
        """The next event of `type_` (whose fields equal `match`), skipping others."""
        deadline = time.monotonic() + wait_s
        while True:
            event = await self.recv(max(0.01, deadline - time.monotonic()))
            if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                return event

    async def drain(self, wait: float = 0.3) -> list[dict[str, Any]]:
        """Every event that arrives within `wait` seconds."""
        out = []
        try:
            while True:
                out.append(await self.recv(wait))
        except TimeoutError:
            return out

    def tray(self) -> dict[str, dict[str, Any]]:
        """The tray as a client builds it: the snapshot, then every tray delta, in order."""
        entries = {e["owner"]["id"]: e for e in self.snapshot}
        for event in self.seen_events:
            if event["type"] == "tray.snapshot":
                entries = {e["owner"]["id"]: e for e in event["items"]}
            elif event["type"] == "tray.update":
                entries[event["entry"]["owner"]["id"]] = event["entry"]
            elif event["type"] == "tray.remove":
                entries.pop(event["owner_id"], None)
        return entries

    async def send(self, **op: Any) -> None:
        await self.ws.send(orjson.dumps(op).decode())

    async def close(self) -> None:
        await self.ws.close()
