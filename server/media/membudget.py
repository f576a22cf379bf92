"""A memory budget for media work: jobs are admitted by the bytes they will hold.

`MemoryBudget` is a byte-counting semaphore for one event loop. A job asks to
`hold(n)` bytes before it decodes anything (n estimated from the file's header,
see `server.media.estimate_bytes`) and gives them back when it ends, so the
jobs running at any moment never hold more than `total_bytes` between them.
Waiters are served first come, first served: a large job at the head is not
starved by a stream of small ones that would fit beside the running jobs.
A request larger than the whole budget can never be served and is refused at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

MIB = 1024 * 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 1 * MIB  # mapping a 720p frame costs no more than writing it (measured)


def return_freed_buffers_to_the_os() -> bool:
    """Make every allocation >= 1 MiB its own mapping, unmapped again when freed (glibc only).

    glibc serves large blocks from mmap only above a threshold that it raises
    (up to 32 MiB) each time such a block is freed; after that, decode buffers
    (Pillow's 16 MiB blocks, FFmpeg frames, libwebp canvases) come from the
    threads' arenas, and what a finished job freed stays in RSS while the next
    job, on another thread, maps fresh memory. Pinning the threshold
    (`mallopt(M_MMAP_THRESHOLD)`, which also stops it moving) keeps RSS at what
    the running jobs hold, which is what the budget counts. Returns False where
    there is no glibc `mallopt` (musl, macOS): the budget still holds, RSS may not.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class OverBudget(ValueError):
    """A request for more bytes than the whole budget: it could never be admitted."""

    def __init__(self, wanted_bytes: int, total_bytes: int) -> None:
        super().__init__(f"{wanted_bytes} bytes wanted; the budget is {total_bytes}")
        self.wanted_bytes, self.total_bytes = wanted_bytes, total_bytes


class MemoryBudget:
    """`total_bytes` to share between jobs; FIFO waiting when they do not fit right now."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError("a memory budget must be positive")
        self.total_bytes = total_bytes
        self.in_use_bytes = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Number of requests queued for bytes."""
        return len(self._waiters)

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Hold `nbytes` for the `async with` block, waiting (FIFO) until they fit.

        Raises `OverBudget` at once when `nbytes > total_bytes`. Cancelling a
        waiter gives its place up; nothing stays held.
        """
        nbytes = max(0, nbytes)
        if nbytes > self.total_bytes:
            raise OverBudget(nbytes, self.total_bytes)
        await self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    async def _acquire(self, nbytes: int) -> None:
        if not self._waiters and self.in_use_bytes + nbytes <= self.total_bytes:
            self.in_use_bytes += nbytes
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._waiters.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release(nbytes)  # granted as we were cancelled: hand the bytes on
            else:
                self._waiters.remove(entry)
                self._wake()  # we may have been the head blocking smaller requests
            raise

    def _release(self, nbytes: int) -> None:
        self.in_use_bytes -= nbytes
        self._wake()

    def _wake(self) -> None:
        """Grant waiting requests from the head of the queue while they fit."""
        while self._waiters and self.in_use_bytes + self._waiters[0][0] <= self.total_bytes:
            nbytes, granted = self._waiters.popleft()
            self.in_use_bytes += nbytes
            granted.set_result(None)
