"""HTTP: posting, sharing, the tray, reading, seen, viewers, reactions, replies, archive."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.checks import (
    check_audience,
    check_caption,
    check_fields,
    check_lifetime,
    check_reply,
)
from server.api.common import (
    caller,
    encode_cursor,
    limit_only,
    limited,
    paging,
    post_gate,
    read_json,
    services,
)
from server.api.forms import read_post_form
from server.api.responses import JSONResponse, no_content
from server.core.errors import Forbidden, NotFound, field_error
from server.media.pipeline import MediaLimits
from server.store.scratch import workdir
from server.store.users import User
from server.stories.seen import check_emoji


async def _idempotent(request: Request, user: User, run: Any) -> Response:
    """Run `run()` → (status, body) once per `Idempotency-Key`; replay the first result."""
    raw = request.headers.get("idempotency-key")
    if raw is None:
        status, body = await run()
        return JSONResponse(body, status_code=status)
    idem = services(request).idempotency
    key = idem.key(user["id"], raw)
    stored = await idem.begin(key)
    if stored is not None:
        return JSONResponse(
            stored[1], status_code=stored[0], headers={"Idempotent-Replayed": "true"}
        )
    try:
        status, body = await run()
    except BaseException:
        await idem.abort(key)
        raise
    await idem.finish(key, status, body)
    return JSONResponse(body, status_code=status)


async def post_story(request: Request) -> Response:
    """`POST /stories` multipart: media, caption?, audience?, lifetime_h? → 201 StoryItem."""
    _, user = await post_gate(request)
    svc = services(request)
    s = svc.settings
    limits = MediaLimits.from_settings(s)

    async def run() -> tuple[int, Any]:
        async with workdir(svc.store.tmp_dir()) as folder:
            form = await read_post_form(request, folder, s.max_upload_bytes)
            caption = check_caption(form.caption, s.max_caption_chars)
            audience = check_audience(form.audience)
            lifetime = check_lifetime(form.lifetime_h, s.default_lifetime_h)
            media = await svc.media.process(form.media_path, folder, limits)
            posted = await svc.writer.create(user, media, caption=caption, audience=audience,
                                             lifetime_h=lifetime, source="upload")  # fmt: skip
        return 201, posted.item

    return await _idempotent(request, user, run)


async def share_story(request: Request) -> Response:
    """`POST /stories/{id}/share {"caption"?, "audience"?, "lifetime_h"?}` → 201 StoryItem."""
    _, user = await post_gate(request)
    svc = services(request)
    body = await read_json(request)
    check_fields(body, {"caption", "audience", "lifetime_h"})
    original, _, source = await svc.reader.visible_with_source(
        user["id"], request.path_params["id"]
    )
    if original.audience != "public" and original.owner != user["id"]:
        raise Forbidden("only public story items can be shared to another story")

    async def run() -> tuple[int, Any]:
        posted = await svc.writer.share(
            user, original, source,
            caption=check_caption(body.get("caption"), svc.settings.max_caption_chars),
            audience=check_audience(body.get("audience")),
            lifetime_h=check_lifetime(body.get("lifetime_h"), svc.settings.default_lifetime_h),
        )  # fmt: skip
        return 201, posted.item

    return await _idempotent(request, user, run)


async def tray(request: Request) -> Response:
    _, user = await caller(request)
    return JSONResponse({"items": await services(request).reader.tray(user["id"])})


async def user_stories(request: Request) -> Response:
    _, user = await caller(request)
    svc = services(request)
    owner = await svc.store.users.resolve(request.path_params["ref"])
    if not owner:
        raise NotFound("no such user")
    return JSONResponse(await svc.reader.user_stories(user["id"], owner))


async def get_story(request: Request) -> Response:
    _, user = await caller(request)
    svc = services(request)
    rec = await svc.reader.visible(user["id"], request.path_params["id"])
    return JSONResponse((await svc.reader.render_many(user["id"], [rec]))[0])


async def delete_story(request: Request) -> Response:
    _, user = await caller(request)
    svc = services(request)
    await limited(request, "edits", user["id"], svc.settings.edits_per_minute)
    rec = await svc.reader.own_live(user["id"], request.path_params["id"])
    await svc.writer.delete(user["id"], rec)
    return no_content()


async def patch_story(request: Request) -> Response:
    """`PATCH /stories/{id} {"audience"}` (owner) → StoryItem. An extension of the API."""
    _, user = await caller(request)
    svc = services(request)
    await limited(request, "audience changes", user["id"], svc.settings.posts_per_minute)
    body = await read_json(request)
    if set(body) - {"audience"}:
        raise field_error(sorted(set(body) - {"audience"})[0], "only audience can change")
    rec = await svc.reader.visible(user["id"], request.path_params["id"])
    if "audience" in body:
        rec = await svc.writer.set_audience(user["id"], rec, check_audience(body["audience"]))
    return JSONResponse((await svc.reader.render_many(user["id"], [rec]))[0])


async def mark_seen(request: Request) -> Response:
    """`POST /stories/{id}/seen` → 204: the item was shown to the caller (`SeenBook.mark_seen`)."""
    _, user = await caller(request)
    svc = services(request)
    await limited(request, "seen marks", user["id"], svc.settings.seen_per_minute)
    await svc.seen.mark_seen(user, request.path_params["id"])
    return no_content()


async def viewers(request: Request) -> Response:
    _, user = await caller(request)
    limit = limit_only(request)
    page = await services(request).seen.viewers(
        user["id"], request.path_params["id"], request.query_params.get("cursor"), limit
    )
    return JSONResponse(page)


async def _message_gate(request: Request) -> User:
    """Caller and the replies-and-reactions rate limit (429)."""
    _, user = await caller(request)
    svc = services(request)
    await limited(request, "replies and reactions", user["id"], svc.settings.messages_per_minute)
    return user


async def react(request: Request) -> Response:
    user = await _message_gate(request)
    body = await read_json(request)
    check_fields(body, {"emoji"})
    await services(request).seen.react(
        user, request.path_params["id"], check_emoji(body.get("emoji"))
    )
    return no_content()


async def reply(request: Request) -> Response:
    user = await _message_gate(request)
    svc = services(request)
    body = await read_json(request)
    check_fields(body, {"text"})
    text = check_reply(body.get("text"), svc.settings.max_reply_chars)
    return JSONResponse(
        await svc.seen.reply(user, request.path_params["id"], text), status_code=201
    )


async def list_replies(request: Request) -> Response:
    _, user = await caller(request)
    return JSONResponse(
        {
            "items": await services(request).seen.replies(user["id"], request.path_params["id"]),
            "next_cursor": None,
        }
    )


async def archive(request: Request) -> Response:
    _, user = await caller(request)
    offset, limit = paging(request)
    items, nxt = await services(request).reader.archive(user["id"], offset, limit)
    return JSONResponse({"items": items, "next_cursor": encode_cursor(nxt)})


routes = [
    Route("/stories", post_story, methods=["POST"]),
    Route("/tray", tray, methods=["GET"]),
    Route("/me/archive", archive, methods=["GET"]),
    Route("/users/{ref}/stories", user_stories, methods=["GET"]),
    Route("/stories/{id}", get_story, methods=["GET"]),
    Route("/stories/{id}", delete_story, methods=["DELETE"]),
    Route("/stories/{id}", patch_story, methods=["PATCH"]),
    Route("/stories/{id}/share", share_story, methods=["POST"]),
    Route("/stories/{id}/seen", mark_seen, methods=["POST"]),
    Route("/stories/{id}/viewers", viewers, methods=["GET"]),
    Route("/stories/{id}/reactions", react, methods=["POST"]),
    Route("/stories/{id}/replies", reply, methods=["POST"]),
    Route("/stories/{id}/replies", list_replies, methods=["GET"]),
]
