"""Per-connection backpressure: a byte-bounded send queue and view-count coalescing.

Both are plain data structures with an injected clock, tested without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.core.frames import Encoded

NOTHING: tuple[Encoded, ...] = ()  # the queue of every idle outbox (no list each)


class Outbox:
    """Frames waiting to be sent to one connection, at most `max_bytes` of them.

    `push` returns False when the frame does not fit: the caller then closes
    the connection with 1013 (too slow a reader). `take` removes everything
    queued, for one packed send.
    """

    __slots__ = ("_frames", "max_bytes", "size")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0  # bytes queued
        self._frames: list[Encoded] | tuple[Encoded, ...] = NOTHING  # a list from the first push

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Encoded) -> bool:
        size = self.size + frame.size
        if size > self.max_bytes:
            return False
        if isinstance(self._frames, list):
            self._frames.append(frame)
        else:  # most sockets are idle: no list each until one is needed
            self._frames = [frame]
        self.size = size
        return True

    def take(self) -> Sequence[Encoded]:
        """Everything queued, oldest first."""
        frames, self._frames = self._frames, NOTHING
        self.size = 0
        return frames


class ViewCountCoalescer:
    """At most one `story.view_count` per item per `interval_ms`; the highest count wins.

    The default, 260 ms, keeps any one-second window to at most 4 updates
    (250 ms would allow 5 when they fall exactly on the window's edges).

    `offer(item, count, now)` returns True when the count may be sent now;
    otherwise it is kept, and `due(now)` hands back every kept count whose
    interval has passed, so the final value is always delivered exactly.
    View counts only grow, but concurrent seen calls may publish them out of
    order, so a count lower than one already sent or kept is dropped.
    """

    def __init__(self, interval_ms: int = 260) -> None:
        self.interval_ms = interval_ms
        self._last_sent: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._best: dict[str, int] = {}

    def offer(self, item: str, count: int, now_ms: int) -> bool:
        if count <= max(self._best.get(item, -1), self._pending.get(item, -1)):
            return False
        last = self._last_sent.get(item)
        if last is None or now_ms - last >= self.interval_ms:
            self._last_sent[item] = now_ms
            self._best[item] = count
            self._pending.pop(item, None)
            return True
        self._pending[item] = count
        return False

    def due(self, now_ms: int) -> list[tuple[str, int]]:
        ready = [
            (item, count)
            for item, count in self._pending.items()
            if now_ms - self._last_sent.get(item, 0) >= self.interval_ms
        ]
        for item, count in ready:
            del self._pending[item]
            self._last_sent[item] = now_ms
            self._best[item] = count
        return ready

    def next_due_ms(self) -> int | None:
        """When the earliest kept count becomes due, or None when nothing is kept."""
        if not self._pending:
            return None
        return min(self._last_sent[i] + self.interval_ms for i in self._pending)
