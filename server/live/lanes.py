"""A bounded work queue with one thread of its own: one per recorded track.

The recorder reads frames on the event loop as soon as aiortc has decoded them
and hands each to its track's lane; the lane's thread encodes them in order.
Audio and video have a lane each, so a slow video encoder never delays audio.
When a lane falls `max_items` behind, the oldest waiting item is dropped (and
counted): the queue, and the memory and the stop latency it stands for, stays
bounded on a machine that cannot keep up, instead of growing without limit in
aiortc's receiver queue.

Items and jobs (`run`: open, finish or abort the file) share one FIFO, so a job
runs after every item put before it and before every item put after it, however
busy the thread is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: concurrent.futures.Future[Any]


class FrameLane(Generic[T]):
    """Items go in on the event loop (`put`, never blocks) and through `sink` on the lane's thread.

    `name`: thread name. `max_items`: items that may wait; a `put` beyond drops the
    oldest waiting one (`dropped` counts them). `sink(item)` runs for every item
    not dropped, in order, on the lane's only thread. When `sink` raises, `error`
    keeps the exception and every later item is discarded (not counted as dropped);
    jobs still run.
    """

    def __init__(self, name: str, sink: Callable[[T], None], max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = max_items
        self.dropped = 0
        self.done = 0  # items `sink` has finished
        self.error: BaseException | None = None
        self._sink = sink
        self._queue: deque[T | _Job] = deque()  # items and jobs, in the order they came
        self._waiting = 0  # items (not jobs) in `_queue`
        self._lock = threading.Lock()
        self._scheduled = False  # a drain job is queued or running on the executor
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    @property
    def backlog(self) -> int:
        """Items waiting for the lane's thread now."""
        return self._waiting

    def put(self, item: T) -> None:
        """Queue `item`; drop the oldest waiting item first when `max_items` are waiting."""
        if self.error is not None or self._closed:
            return
        with self._lock:
            if self._waiting >= self.max_items:
                self._drop_oldest()
            self._queue.append(item)
            self._waiting += 1
        self._schedule()

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """`fn(*args)` on the lane's thread, after every item put before this call and
        before any put after it. Raises RuntimeError when the lane is closed."""
        job = _Job(fn, args, concurrent.futures.Future())
        with self._lock:
            if self._closed:
                raise RuntimeError("lane is closed")
            self._queue.append(job)
        self._schedule()
        result: R = await asyncio.wrap_future(job.future)
        return result

    async def drain(self) -> None:
        """Wait until every item put so far has gone through `sink` (or been discarded)."""
        await self.run(_nothing)

    def clear(self) -> None:
        """Discard the items still waiting (the one `sink` is working on completes)."""
        with self._lock:
            self._queue = deque(e for e in self._queue if isinstance(e, _Job))
            self._waiting = 0

    def close(self) -> None:
        """Discard waiting items, cancel waiting jobs, let the thread end once idle (no wait)."""
        with self._lock:
            self._closed = True
            jobs = [e for e in self._queue if isinstance(e, _Job)]
            self._queue.clear()
            self._waiting = 0
        for job in jobs:
            job.future.cancel()
        self._executor.shutdown(wait=False)

    def _drop_oldest(self) -> None:
        """Remove the oldest waiting item (jobs stay); called with the lock held."""
        for i, entry in enumerate(self._queue):
            if not isinstance(entry, _Job):
                del self._queue[i]
                self._waiting -= 1
                self.dropped += 1
                return

    def _schedule(self) -> None:
        with self._lock:
            if self._scheduled or self._closed:
                return
            self._scheduled = True
        self._executor.submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._scheduled = False
                    return
                entry = self._queue.popleft()
                if not isinstance(entry, _Job):
                    self._waiting -= 1
            if isinstance(entry, _Job):
                _run_job(entry)
            elif self.error is None:
                try:
                    self._sink(entry)
                    self.done += 1
                except Exception as exc:  # the recorder reads `error` and ends the recording
                    self.error = exc


def _run_job(job: _Job) -> None:
    if not job.future.set_running_or_notify_cancel():
        return
    try:
        job.future.set_result(job.fn(*job.args))
    except BaseException as exc:
        job.future.set_exception(exc)


def _nothing() -> None:
    return None
