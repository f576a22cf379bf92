"""The baseline for the push benchmarks: a minimal relay on the `websockets` library.

`python bench/baseline_ws.py --port P --redis-url URL --channel C [--channel C2 ...]`
subscribes to the given Redis channels (the same `ev:{owner}:stories` /
`ev:{user}:inbox` channels the stories server uses, carrying the same bytes) and
relays every message, unchanged, as one text frame to every connected client
with `websockets.broadcast()`. No auth, no per-connection state, no filtering:
the ceiling for a Python WebSocket fan-out on this machine. A client gets one
`{"type": "hello"}` frame when it connects; whatever it sends is ignored.

It runs on uvloop when installed, like uvicorn (`--loop auto`) runs the stories
server, and binds 127.0.0.1 only. `BaselineProcess` starts it as a child process
and stops it by its PID.

`--uvicorn-idle` runs instead the smallest ASGI app on uvicorn as the stories
server runs it (`--ws websockets-sansio`; like the stories server's `/ws`, no
Starlette routing or middleware on the way): it accepts, sends
`{"type": "tray.snapshot"}` and reads until the client goes. It relays nothing;
it is the memory floor of the server stack for one idle socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HELLO = '{"type":"hello"}'


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def relay(host: str, port: int, redis_url: str, channels: list[str]) -> None:
    import redis.asyncio as aioredis
    import websockets
    from websockets.asyncio.server import ServerConnection, serve

    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.send(HELLO)
            async for _ in ws:  # clients send nothing; keep reading until they go
                pass
        finally:
            clients.discard(ws)

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)
    confirmed, deadline = 0, time.monotonic() + 10
    while confirmed < len(channels) and time.monotonic() < deadline:
        msg = await pubsub.get_message(timeout=1.0)
        if msg is not None and msg["type"] == "subscribe":
            confirmed += 1
    if confirmed < len(channels):
        raise SystemExit("baseline: Redis did not confirm the subscriptions")

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, max_size=64 * 1024, compression=None, backlog=4096):
        print(f"baseline ready on ws://{host}:{port}/ ({len(channels)} channels)", flush=True)

        async def pump() -> None:
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is not None and msg["type"] == "message":
                    websockets.broadcast(clients, msg["data"].decode())

        task = asyncio.create_task(pump())
        await stop
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await pubsub.aclose()
    await client.aclose()


def idle_app() -> Any:
    """The server-stack floor: accept, one frame, read until disconnect (plain ASGI 3)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": '{"type":"tray.snapshot","items":[]}'})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-url")
    p.add_argument("--channel", action="append")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--uvicorn-idle", action="store_true", help="the server-stack floor instead")
    args = p.parse_args(argv)
    raise_nofile()
    if args.uvicorn_idle:
        import uvicorn

        uvicorn.run(idle_app(), host=args.host, port=args.port, log_level="warning", lifespan="off",
                    ws="websockets-sansio", backlog=4096)  # fmt: skip
        return 0
    if not args.redis_url or not args.channel:
        p.error("--redis-url and --channel are required")
    run = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            run = uvloop.run
    run(relay(args.host, args.port, args.redis_url, args.channel))
    return 0


@dataclass
class BaselineProcess:
    """`bench/baseline_ws.py` as a child process on a free 127.0.0.1 port; stopped by PID."""

    redis_url: str
    channels: list[str]
    log_path: Path
    uvicorn_idle: bool = False
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 20.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        args = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port),
                "--redis-url", self.redis_url]  # fmt: skip
        for channel in self.channels:
            args += ["--channel", channel]
        if self.uvicorn_idle:
            args.append("--uvicorn-idle")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **self.env})  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"baseline exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return  # it listens only once subscribed
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"baseline did not start in {timeout_s} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM to the baseline's PID, SIGKILL to that PID if it does not exit."""
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


if __name__ == "__main__":
    sys.exit(main())
