"""HTTP: media files behind signed URLs (`signing.py`), with Range support.

Answers 404 — never 403 — for a bad signature, a past `exp`, or an item that
is no longer live (scope `live`) or past its archive retention (scope
`archive`). A share's URLs serve its source's files, and only while the source
is live (`StoryReader.media_of`). `Cache-Control: private, max-age` never
outlives the URL.

Range requests (RFC 9110 section 14) are judged here (`parse.byte_ranges`),
so their errors are problem+json like every other: 400 for a malformed range
set, 416 with `Content-Range: bytes */<size>` when nothing is satisfiable.
Starlette's `FileResponse` then serves exactly the ranges we accepted.
"""

from __future__ import annotations

from stat import S_ISREG

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.api.common import services
from server.core import parse
from server.core.errors import NotFound
from server.core.signing import VARIANTS


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


def _accepted_range(request: Request, response: FileResponse, size: int) -> str | None:
    """The canonical Range to serve, None for the whole file. Raises 400 / 416."""
    raw = request.headers.get("range")
    if raw is None or request.method not in ("GET", "HEAD"):
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range not in (  # RFC 9110 13.1.5: strong match, else 200
        response.headers.get("etag"),
        response.headers.get("last-modified"),
    ):
        return None
    ranges = parse.byte_ranges(raw, size)
    if ranges is None:
        return None
    return "bytes=" + ",".join(f"{first}-{last}" for first, last in ranges)


async def media(request: Request) -> Response:
    svc = services(request)
    item, variant = request.path_params["item"], request.path_params["variant"]
    q = request.query_params
    scope, sig = q.get("s", ""), q.get("sig", "")
    exp = parse.uint(q.get("exp", ""))
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
    path = svc.store.storage.path(key)
    try:
        stat = path.stat()  # one stat, local disk
    except FileNotFoundError:
        raise NotFound("no such media") from None
    if not S_ISREG(stat.st_mode):
        raise NotFound("no such media")
    max_age = max(0, (exp - now) // 1000)
    response = _RangedFile(
        path,
        media_type=rec.mime if variant == "file" else "image/jpeg",
        headers={
            "Cache-Control": f"private, max-age={max_age}",
            "X-Content-Type-Options": "nosniff",
        },
        stat_result=stat,
    )
    response.range_header = _accepted_range(request, response, stat.st_size)
    return response


routes = [Route("/media/{item}/{variant}", media, methods=["GET", "HEAD"])]
