"""Uploads: bounded multipart parsing and a bounded pool for media work.

Media work (Pillow, PyAV) runs in `MediaPool`'s threads, never on the event
loop. At most `workers + queue` jobs are admitted at once; beyond that a post
gets 503 with Retry-After instead of an unbounded wait. Admitted jobs also
share a memory budget (`media_memory_budget_bytes`): each first has its peak
memory estimated from the file's header (`media.estimate_bytes`, on a thread of
its own, one file at a time), then waits, first come first served, until that
many bytes are free; a job that needs more than the whole budget is refused
with 422. So the jobs running at once never hold more than the budget.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from server.errors import (
    BadRequest,
    InvalidMedia,
    LengthRequired,
    PayloadTooLarge,
    ServiceUnavailable,
    field_error,
)
from server.media import MediaLimits, ProcessedMedia, estimate_bytes, process_media
from server.membudget import MIB, MemoryBudget, return_freed_buffers_to_the_os
from server.parse import content_length
from server.scratch import process_dir

COPY_CHUNK = 1024 * 1024


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
                job = loop.run_in_executor(self.executor, process_media, src, workdir, limits)
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


@dataclass
class PostForm:
    """The fields of a story upload, files saved under `workdir`."""

    media_path: Path
    caption: str | None
    audience: str | None
    lifetime_h: str | None


@asynccontextmanager
async def workdir(tmp_root: Path) -> AsyncIterator[Path]:
    """A private temporary folder, removed with everything in it on exit.

    It lives in this process's folder of `tmp_root` (`scratch.process_dir`), so what a
    killed process leaves is removed when the next one starts (`scratch.sweep_data_dir`).
    """
    path = process_dir(tmp_root) / uuid.uuid4().hex
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def read_post_form(request: Request, folder: Path, max_bytes: int) -> PostForm:
    """Parse a `multipart/form-data` story upload into `folder`.

    Raises LengthRequired (411) without Content-Length, PayloadTooLarge (413)
    above `max_bytes`, BadRequest (400) for malformed multipart, InvalidField
    (422) when the `media` file is missing.
    """
    declared = content_length(request.headers.get("content-length"))
    if declared is None:
        raise LengthRequired("uploads need a Content-Length header")
    if declared > max_bytes + 64 * 1024:
        raise PayloadTooLarge(f"uploads are limited to {max_bytes} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("expected multipart/form-data with a `media` file")
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    except HTTPException as exc:  # inside an app, Starlette re-raises MultiPartException as 400
        if exc.status_code != 400:
            raise
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
    try:
        upload = form.get("media")
        if not isinstance(upload, UploadFile):
            raise field_error("media", "a file is required")
        if upload.size is not None and upload.size > max_bytes:
            raise PayloadTooLarge(f"uploads are limited to {max_bytes} bytes")
        dest = folder / "upload"
        with dest.open("wb") as out:
            while chunk := await upload.read(COPY_CHUNK):
                out.write(chunk)
        return PostForm(
            dest,
            _text(form.get("caption")),
            _text(form.get("audience")),
            _text(form.get("lifetime_h")),
        )
    finally:
        await form.close()


def _text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("only `media` may be a file")
    return value
