"""HTTP: media files behind signed URLs (`signing.py`), with Range support.

Answers 404 — never 403 — for a bad signature, a past `exp`, or an item that
is no longer live (scope `live`) or past its archive retention (scope
`archive`). A share's URLs serve its source's files, and only while the source
is live (`StoryReader.media_of`). `Cache-Control: private, max-age` never
outlives the URL.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from server.errors import NotFound
from server.http_common import services
from server.signing import VARIANTS


async def media(request: Request) -> Response:
    svc = services(request)
    item, variant = request.path_params["item"], request.path_params["variant"]
    q = request.query_params
    scope, exp, sig = q.get("s", ""), q.get("exp", ""), q.get("sig", "")
    now = svc.store.clock.now_ms()
    if (
        variant not in VARIANTS
        or scope not in ("live", "archive")
        or not exp.isdigit()
        or int(exp) <= now
        or not svc.store.signer.verify(item, variant, scope, int(exp), sig)
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
    if not path.is_file():
        raise NotFound("no such media")
    max_age = max(0, (int(exp) - now) // 1000)
    return FileResponse(
        path,
        media_type=rec.mime if variant == "file" else "image/jpeg",
        headers={
            "Cache-Control": f"private, max-age={max_age}",
            "X-Content-Type-Options": "nosniff",
        },
    )


routes = [Route("/media/{item}/{variant}", media, methods=["GET", "HEAD"])]
