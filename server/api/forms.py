"""Story uploads over HTTP: bounded multipart parsing into a private scratch folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from server.core.errors import BadRequest, LengthRequired, PayloadTooLarge, field_error
from server.core.parse import content_length

COPY_CHUNK = 1024 * 1024


@dataclass
class PostForm:
    """The fields of a story upload, files saved in the folder given to `read_post_form`."""

    media_path: Path
    caption: str | None
    audience: str | None
    lifetime_h: str | None


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
