"""Sending queued frames to many sockets without waking a task per socket per event.

The first frame a connection gets in an event-loop iteration is written at
once, through its `Wire`, when nothing is queued or in flight for it: one pass
over the followers, and the first socket is written to while the last is being
filtered. Frames that come after it in the same iteration (a burst read from
Redis in one go) are queued in the connection's bounded outbox and go out in one
flush scheduled with `call_soon`, packed into one JSON array. Only a send that
must wait for the socket (backpressure) gets a task, and frames that queue up
behind it are sent, packed, when it finishes. (One writer task per connection
costs about twice the CPU per delivery at 50k deliveries/s: the team's fan-out
notes. This design's figures: docs/benchmarks.md, fan-out.)

A connection whose outbox overflows is a reader too slow to keep up: it is
counted, marked closing and handed to `too_slow` (the hub closes it with 1013);
it never delays the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from server.core import frames
from server.push.connection import Connection

log = logging.getLogger("stories.dispatch")


class Dispatcher:
    """Outboxes of `conns` (the hub's attached connections), flushed once per loop iteration."""

    def __init__(self, conns: set[Connection], too_slow: Callable[[Connection], None]) -> None:
        self.conns = conns
        self.too_slow = too_slow
        self.closed_slow = 0  # connections closed 1013 for falling behind
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self.iteration = 1  # advanced by the flush: one per loop iteration that sent anything

    def enqueue(self, conn: Connection, frame: frames.Encoded) -> None:
        """Queue `frame` for `conn`; an overflowing outbox gives up on the connection."""
        if conn.closing:
            return
        if conn.sending is None and not conn.dirty and conn.written_in != self.iteration:
            conn.written_in = self.iteration  # later frames of this iteration wait and pack
            if not self._flush_scheduled:  # checked here too: this line runs per follower
                self._schedule_flush()
            self._send(conn, frame)
            return
        if not conn.outbox.push(frame):
            conn.closing = True
            self.closed_slow += 1
            self.too_slow(conn)
            return
        if conn.sending is None and not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Send what every dirty connection has queued: one frame each; a new iteration."""
        self._flush_scheduled = False
        self.iteration += 1
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.dirty = False
            self._send_queued(conn)

    def _send_queued(self, conn: Connection) -> None:
        batch = conn.outbox.take()
        if batch and not conn.closing:
            self._send(conn, batch[0] if len(batch) == 1 else frames.pack(batch))

    def _send(self, conn: Connection, payload: frames.Encoded) -> None:
        try:
            conn.sending = conn.wire.send(payload)
        except Exception as exc:  # the socket went away; its endpoint detaches it
            log.debug("send to %s failed: %s", conn.id, exc)
            conn.closing = True
            return
        if conn.sending is not None:
            conn.sending.add_done_callback(functools.partial(self._sent, conn))

    def _sent(self, conn: Connection, task: asyncio.Task[None]) -> None:
        """A blocked send finished: send what queued up behind it (unless the socket went)."""
        conn.sending = None
        if task.cancelled() or task.exception() is not None:  # retrieved: no "never retrieved"
            conn.closing = True  # the socket went away while we waited; its endpoint detaches it
            return
        if conn.outbox and not conn.closing and conn in self.conns:
            self._send_queued(conn)
