"""HTTP: media files behind signed URLs (`server/core/signing.py`), with Range support.

Answers 404 — never 403 — for a bad signature, a past `exp`, or an item that
is no longer live (scope `live`) or past its archive retention (scope
`archive`). A share's URLs serve its source's files, and only while the source
is live (`StoryReader.media_of`). `Cache-Control: private, max-age` never
outlives the URL.

Range requests (RFC 9110 section 14) are judged here (`parse.byte_ranges`),
so their errors are problem+json like every other: 400 for a malformed range
set, 416 with `Content-Range: bytes */<size>` when nothing is satisfiable.

Local files: Starlette's `FileResponse` serves exactly the ranges we accepted
(multipart/byteranges for several). Object store (`object_store_url`): one range
is a ranged GET streamed through (206); a request for several ranges gets the
whole file (200, which RFC 9110 section 14.2 allows); with `media_redirect` the
answer is instead a 302 (`no-store`) to a URL the object store signed, valid for
`PRESIGN_S` (60 s) at most and never past ours, after the same checks. A store that does not answer is a 503.
"""

from __future__ import annotations

from email.utils import formatdate
from pathlib import Path
from stat import S_ISREG

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.api.common import services
from server.core import parse
from server.core.errors import NotFound
from server.core.signing import VARIANTS
from server.store.storage import Storage

# How long a presigned object-store URL of `media_redirect` lives: long enough to start
# a download (and its Range requests), short enough that a deleted item's bytes stop
# being reachable soon after our own URL stops answering.
PRESIGN_S = 60


class _RangedFile(FileResponse):
    """A FileResponse that sees only `range_header`, the Range we accepted (or none).

    Starlette parses Range itself and answers its own errors as text/plain;
    handing it one canonical `bytes=first-last,...` (If-Range already
    evaluated) leaves it nothing to refuse.
    """

    range_header: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        if self.range_header is not None:
            headers.append((b"range", self.range_header.encode("latin-1")))
        await super().__call__({**scope, "headers": headers}, receive, send)


def _accepted_ranges(
    request: Request, validators: tuple[str | None, ...], size: int
) -> list[tuple[int, int]] | None:
    """The ranges to serve, `[(first, last)]` inclusive; None for the whole file.

    `validators` are the response's ETag and Last-Modified, which an If-Range
    must match exactly (RFC 9110 section 13.1.5), else the whole file is sent.
    Raises BadRequest (400) / RangeNotSatisfiable (416).
    """
    raw = request.headers.get("range")
    if raw is None or request.method not in ("GET", "HEAD"):
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range not in validators:
        return None
    return parse.byte_ranges(raw, size)


def _local(request: Request, path: Path, media_type: str, headers: dict[str, str]) -> Response:
    """A local file, with the Range we accepted (Starlette does the sending)."""
    try:
        stat = path.stat()  # one stat, local disk
    except FileNotFoundError:
        raise NotFound("no such media") from None
    if not S_ISREG(stat.st_mode):
        raise NotFound("no such media")
    response = _RangedFile(path, media_type=media_type, headers=headers, stat_result=stat)
    validators = (response.headers.get("etag"), response.headers.get("last-modified"))
    ranges = _accepted_ranges(request, validators, stat.st_size)
    if ranges is not None:
        response.range_header = "bytes=" + ",".join(f"{a}-{b}" for a, b in ranges)
    return response


async def _stored(
    request: Request,
    storage: Storage,
    key: str,
    media_type: str,
    headers: dict[str, str],
    redirect_s: int | None,
) -> Response:
    """A file of the object store: 302 to a presigned URL, or streamed (200 / 206)."""
    found = await storage.stat(key)
    if found is None:
        raise NotFound("no such media")
    if redirect_s is not None:
        url = storage.presign(key, max(1, min(redirect_s, PRESIGN_S)))
        if url is not None:  # not cached: every fetch comes back here and is checked again
            headers = {**headers, "Cache-Control": "no-store"}
            return RedirectResponse(url, status_code=302, headers=headers)
    last_modified = formatdate(found.modified_s, usegmt=True)
    headers = {**headers, "Accept-Ranges": "bytes", "Last-Modified": last_modified}
    if found.etag:
        headers["ETag"] = found.etag
    ranges = _accepted_ranges(request, (found.etag, last_modified), found.size)
    first, last, status = 0, found.size - 1, 200
    if ranges is not None and len(ranges) == 1:
        (first, last), status = ranges[0], 206
        headers["Content-Range"] = f"bytes {first}-{last}/{found.size}"
    headers["Content-Length"] = str(last - first + 1)
    if request.method == "HEAD" or found.size == 0:
        return Response(status_code=status, media_type=media_type, headers=headers)
    body = storage.read(key, first, last)
    return StreamingResponse(body, status_code=status, media_type=media_type, headers=headers)


async def media(request: Request) -> Response:
    svc = services(request)
    item, variant = request.path_params["item"], request.path_params["variant"]
    q = request.query_params
    scope, sig = q.get("s", ""), q.get("sig", "")
    exp = parse.canonical_uint(q.get("exp", ""))  # one spelling per URL (cache keys)
    now = svc.store.clock.now_ms()
    if (
        variant not in VARIANTS
        or scope not in ("live", "archive")
        or parse.split_item_id(item) is None
        or exp is None
        or exp <= now
        or not svc.store.signer.verify(item, variant, scope, exp, sig)
    ):
        raise NotFound("no such media")
    rec = await svc.reader.record(item)
    if rec is None or (scope == "live" and not rec.is_live(now)):
        raise NotFound("no such media")
    rec = await svc.reader.media_of(rec)  # a share shows its source's files while it is live
    if rec is None:
        raise NotFound("no such media")
    key = rec.media_key if variant == "file" else rec.poster_key
    max_age = max(0, (exp - now) // 1000)
    media_type = rec.mime if variant == "file" else "image/jpeg"
    headers = {"Cache-Control": f"private, max-age={max_age}", "X-Content-Type-Options": "nosniff"}
    storage = svc.store.storage
    path = storage.local_path(key)
    if path is not None:
        return _local(request, path, media_type, headers)
    redirect_s = max_age if svc.settings.media_redirect else None
    return await _stored(request, storage, key, media_type, headers, redirect_s)


routes = [Route("/media/{item}/{variant}", media, methods=["GET", "HEAD"])]
