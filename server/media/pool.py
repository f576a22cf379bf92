"""The media worker pool: bounded threads, a bounded queue, a memory budget.

Media work (Pillow, PyAV) runs in `MediaPool`'s threads, never on the event
loop. At most `workers + queue` jobs are admitted at once; beyond that a post
gets 503 with Retry-After instead of an unbounded wait. Admitted jobs also
share a memory budget (`media_memory_budget_bytes`): each first has its peak
memory estimated from the file's header (`pipeline.estimate_bytes`, on a thread of
its own, one file at a time), then waits, first come first served, until that
many bytes are free; a job that needs more than the whole budget is refused
with 422. So the jobs running at once never hold more than the budget.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from server.core.errors import InvalidMedia, ServiceUnavailable
from server.media.membudget import MIB, MemoryBudget, return_freed_buffers_to_the_os
from server.media.pipeline import MediaLimits, ProcessedMedia, estimate_bytes, process_media


class MediaPool:
    """`workers` threads plus room for `queue` waiting jobs, within `memory_budget_bytes`."""

    def __init__(self, workers: int, queue: int, memory_budget_bytes: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="media")
        self.estimator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="media-estimate")
        self.budget = MemoryBudget(memory_budget_bytes)
        return_freed_buffers_to_the_os()
        self.capacity = workers + queue
        self.inflight = 0

    async def process(self, src: Path, workdir: Path, limits: MediaLimits) -> ProcessedMedia:
        """Run `process_media` in a worker thread once its estimated memory is free.

        Takes over `src` (`consume`): a video kept as sent is renamed, not copied.

        Raises ServiceUnavailable (503) when `workers + queue` jobs are in,
        InvalidMedia (422) when the job alone needs more than the budget, and
        whatever `estimate_bytes` / `process_media` raise for the file.
        """
        if self.inflight >= self.capacity:
            raise ServiceUnavailable("media processing is busy; retry shortly", retry_after_s=5)
        self.inflight += 1
        try:
            loop = asyncio.get_running_loop()
            reading = min(2 * os.stat(src).st_size, self.budget.total_bytes)
            async with self.budget.hold(reading):  # Pillow reads a WebP whole; libwebp copies it
                need = await loop.run_in_executor(self.estimator, estimate_bytes, src, limits)
            if need > self.budget.total_bytes:
                raise InvalidMedia(
                    f"processing this file needs about {need // MIB} MiB of memory; uploads may"
                    f" use at most {self.budget.total_bytes // MIB} MiB: send a smaller picture"
                    " or video"
                )
            async with self.budget.hold(need):
                job = loop.run_in_executor(
                    self.executor, partial(process_media, consume=True), src, workdir, limits
                )
                try:
                    return await asyncio.shield(job)
                except asyncio.CancelledError:  # a thread cannot be stopped: its bytes stay
                    await asyncio.wait([job])  # held until it ends
                    raise
        finally:
            self.inflight -= 1

    def close(self) -> None:
        self.estimator.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=True, cancel_futures=True)
