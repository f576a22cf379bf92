"""Pushing `story.view_count` to owners, coalesced per item (PROTOCOL.md: at most
4 a second per item, the last one exact).

Each owner's connection has a `ViewCountCoalescer` (outbox.py, the pure rule);
this module applies it to the `story.viewed` events the hub receives: a count
goes out at once when its item's interval has passed, otherwise it is kept and
one timer per connection sends the kept counts when they become due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from server.core import frames
from server.push.connection import Connection

Enqueue = Callable[[Connection, frames.Encoded], None]


class ViewCountPush:
    """`on_viewed(event, conns)` for the owner's connections; frames go through `enqueue`.

    `now_ms()` stamps frames (the server clock); intervals use the monotonic clock.
    """

    def __init__(self, enqueue: Enqueue, now_ms: Callable[[], int]) -> None:
        self.enqueue = enqueue
        self.now_ms = now_ms

    def on_viewed(self, event: dict[str, Any], conns: list[Connection]) -> None:
        item, count = event["item_id"], event["view_count"]
        now = int(time.monotonic() * 1000)
        for conn in conns:
            if conn.coalescer.offer(item, count, now):
                self._send(conn, item, count)
            else:
                self._schedule(conn)

    def _send(self, conn: Connection, item: str, count: int) -> None:
        self.enqueue(
            conn, frames.encode("story.view_count", self.now_ms(), item_id=item, view_count=count)
        )

    def _schedule(self, conn: Connection) -> None:
        due = conn.coalescer.next_due_ms()
        if conn.count_timer is not None or due is None:
            return
        delay = max(0.0, due / 1000 - time.monotonic())
        conn.count_timer = asyncio.get_running_loop().call_later(delay, self._due, conn)

    def _due(self, conn: Connection) -> None:
        conn.count_timer = None
        for item, count in conn.coalescer.due(int(time.monotonic() * 1000)):
            self._send(conn, item, count)
        self._schedule(conn)
