"""A bounded work queue with one thread of its own: one per recorded track.

The recorder reads frames on the event loop as soon as aiortc has decoded them
and hands each to its track's lane; the lane's thread encodes them in order.
Audio and video have a lane each, so a slow video encoder never delays audio.
When a lane falls `max_items` behind, the oldest waiting item is dropped (and
counted): the queue, and the memory and the stop latency it stands for, stays
bounded on a machine that cannot keep up, instead of growing without limit in
aiortc's receiver queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class FrameLane(Generic[T]):
    """Items go in on the event loop (`put`, never blocks) and through `sink` on the lane's thread.

    `name`: thread name. `max_items`: items that may wait; a `put` beyond drops the
    oldest waiting one (`dropped` counts them). `sink(item)` runs for every item
    not dropped, in order, on the lane's only thread. When `sink` raises, `error`
    keeps the exception and every later item is discarded (not counted as dropped).
    """

    def __init__(self, name: str, sink: Callable[[T], None], max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.dropped = 0
        self.done = 0  # items `sink` has finished
        self.error: BaseException | None = None
        self._sink = sink
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._scheduled = False  # a drain job is queued or running on the executor
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    @property
    def backlog(self) -> int:
        """Items waiting for the lane's thread now."""
        return len(self._items)

    def put(self, item: T) -> None:
        """Queue `item`; drop the oldest waiting item first when `max_items` are waiting."""
        if self.error is not None or self._closed:
            return
        with self._lock:
            if len(self._items) >= self.max_items:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._executor.submit(self._drain)

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """`fn(*args)` on the lane's thread, after every item put before this call."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def drain(self) -> None:
        """Wait until every item put so far has gone through `sink` (or been discarded)."""
        await self.run(_nothing)

    def clear(self) -> None:
        """Discard the items still waiting (the one `sink` is working on completes)."""
        with self._lock:
            self._items.clear()

    def close(self) -> None:
        """Discard waiting items and let the thread end once it is idle (does not wait)."""
        with self._lock:
            self._closed = True
            self._items.clear()
        self._executor.shutdown(wait=False)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._scheduled = False
                    return
                item = self._items.popleft()
            if self.error is not None:
                continue
            try:
                self._sink(item)
                self.done += 1
            except Exception as exc:  # the recorder reads `error` and ends the recording
                self.error = exc


def _nothing() -> None:
    return None
