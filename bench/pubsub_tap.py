"""A counting TCP relay in front of Redis: how many pub/sub messages Redis sent through it.

Redis 6.2/7.0 keeps no per-client count of the pub/sub messages it delivers
(`CLIENT LIST` has `omem`, the bytes queued right now, not a total; `tot-net-out`
came later), and `INFO stats` only totals bytes over every client. So a server
process is given `redis://127.0.0.1:<tap port>` instead of Redis's own address:
the tap relays every byte both ways unchanged and, in the Redis → server
direction, counts each pub/sub push frame by channel. A frame is
`*3\\r\\n$7\\r\\nmessage\\r\\n$<n>\\r\\n<channel>\\r\\n$<m>\\r\\n<data>\\r\\n` (RESP2;
`>3` instead of `*3` in RESP3); the stories server's payloads are JSON, which
holds no raw CR LF, so the frame header cannot occur inside one. `pmessage`
frames (pattern subscriptions) are counted apart: the server makes none.

The relay runs its own asyncio loop in a daemon thread, so the benchmark's loop
being busy does not delay the server's Redis traffic. One tap per server
process gives the per-process count.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

HEADERS = (b"*3\r\n$7\r\nmessage\r\n", b">3\r\n$7\r\nmessage\r\n")
PATTERN_HEADERS = (b"*4\r\n$8\r\npmessage\r\n", b">4\r\n$8\r\npmessage\r\n")
TAIL = max(map(len, HEADERS + PATTERN_HEADERS)) - 1
CHUNK = 1 << 16


class FrameCounter:
    """Counts pub/sub message frames by channel in one byte stream fed in arbitrary chunks.

    `feed(chunk)` may split a frame anywhere; the count of a frame is taken once
    its header and channel name have arrived. `messages[channel]` is the count of
    `message` frames, `pattern_messages` the number of `pmessage` frames.
    """

    def __init__(self) -> None:
        self.messages: Counter[str] = Counter()
        self.pattern_messages = 0
        self._buf = b""

    def feed(self, chunk: bytes) -> None:
        """Scan `chunk` (after whatever was left over from the last one)."""
        buf = self._buf + chunk if self._buf else chunk
        pos = 0
        while True:
            hit = min(
                ((i, h) for h in HEADERS + PATTERN_HEADERS if (i := buf.find(h, pos)) >= 0),
                default=None,
            )
            if hit is None:
                self._buf = buf[max(pos, len(buf) - TAIL) :]
                return
            start, header = hit
            if header in PATTERN_HEADERS:
                self.pattern_messages += 1
                pos = start + len(header)
                continue
            name_at = start + len(header)
            try:
                channel, after = _bulk(buf, name_at)
            except ValueError:  # the header was not followed by a channel: not a frame
                pos = name_at
                continue
            if channel is None:  # the channel name has not fully arrived yet
                self._buf = buf[start:]
                return
            self.messages[channel.decode(errors="replace")] += 1
            pos = after


def _bulk(buf: bytes, at: int) -> tuple[bytes | None, int]:
    """The bulk string `$<n>\\r\\n<n bytes>\\r\\n` at `at` and the offset after it; None if cut."""
    eol = buf.find(b"\r\n", at)
    if eol < 0:
        return None, at
    if buf[at : at + 1] != b"$":
        raise ValueError(f"not a bulk string at {at}: {buf[at : at + 16]!r}")
    n = int(buf[at + 1 : eol])
    end = eol + 2 + n
    if len(buf) < end + 2:
        return None, at
    return buf[eol + 2 : end], end + 2


class PubSubTap:
    """A relay on 127.0.0.1 to the Redis at `upstream_url` that counts what it delivers.

    `start()` returns the URL to give the server (`redis://127.0.0.1:<port>/<db>`);
    `messages()` is a snapshot of the count of pub/sub message frames per channel
    summed over every connection relayed so far; `stop()` closes everything.
    Supports `unix://` and `redis://` upstreams without TLS; raises ValueError
    for another scheme.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("unix", "redis"):
            raise ValueError(f"the tap relays unix:// or redis:// only, not {upstream_url!r}")
        self.upstream = parts
        db = parse_qs(parts.query).get("db", [""])[0] if parts.scheme == "unix" else ""
        self.db = db or parts.path.strip("/") or "0"
        self.port = 0
        self._lock = threading.Lock()
        self._counters: list[FrameCounter] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the relay thread; the URL that reaches Redis through it."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                        name="pubsub-tap")  # fmt: skip
        self._thread.start()
        if not ready.wait(timeout_s) or not self.port:
            raise RuntimeError("the pub/sub tap did not start")
        auth = ""
        if self.upstream.scheme == "redis" and (self.upstream.username or self.upstream.password):
            auth = f"{self.upstream.username or ''}:{self.upstream.password or ''}@"
        return f"redis://{auth}127.0.0.1:{self.port}/{self.db}"

    def messages(self) -> Counter[str]:
        """Pub/sub `message` frames relayed so far, by channel, over every connection."""
        total: Counter[str] = Counter()
        with self._lock:
            for counter in self._counters:
                total.update(counter.messages)
        return total

    def pattern_messages(self) -> int:
        with self._lock:
            return sum(c.pattern_messages for c in self._counters)

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self, ready: threading.Event) -> None:
        asyncio.run(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        conns: set[asyncio.StreamWriter] = set()
        server = await asyncio.start_server(lambda r, w: self._relay(r, w, conns), "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        ready.set()
        await self._stopped.wait()
        server.close()
        for w in list(conns):
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream.scheme == "unix":
            return await asyncio.open_unix_connection(self.upstream.path)
        return await asyncio.open_connection(self.upstream.hostname, self.upstream.port or 6379)

    async def _relay(
        self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter,
        conns: set[asyncio.StreamWriter],
    ) -> None:  # fmt: skip
        counter = FrameCounter()
        with self._lock:
            self._counters.append(counter)
        try:
            up_r, up_w = await self._open_upstream()
        except OSError:
            down_w.close()
            return
        conns.update((down_w, up_w))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(CHUNK):
                    if count:
                        with self._lock:
                            counter.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(down_r, up_w, False), pump(up_r, down_w, True))
        conns.difference_update((down_w, up_w))
