"""HTTP: dev login, the caller's profile, users, and the graph (PROTOCOL.md "Users")."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.common import (
    caller,
    client_key,
    encode_cursor,
    limited,
    paging,
    read_json,
    services,
)
from server.api.responses import JSONResponse, no_content
from server.core import events, parse
from server.core.errors import NotFound, field_error
from server.store.users import check_display_name, normalize_handle


async def dev_login(request: Request) -> Response:
    """`POST /auth/dev-login {"handle"}` → `{"token", "user"}`; 404 unless enabled."""
    svc = services(request)
    if not svc.settings.dev_login:
        raise NotFound("dev login is not enabled")
    if svc.auth.algorithm != "HS256":  # dev tokens are HS256; minting would fail after login
        raise NotFound("dev login needs jwt_algorithm HS256")
    await limited(request, "dev logins", client_key(request), svc.settings.dev_logins_per_minute)
    body = await read_json(request)
    user = await svc.store.users.login(normalize_handle(body.get("handle")))
    token = svc.auth.mint(user["id"], svc.store.clock.now_ms() // 1000, handle=user["handle"])
    return JSONResponse({"token": token, "user": user})


async def me(request: Request) -> Response:
    _, user = await caller(request)
    return JSONResponse(user)


async def patch_me(request: Request) -> Response:
    """`PATCH /me {"display_name"?}` → User."""
    _, user = await caller(request)
    await limited(request, "edits", user["id"], services(request).settings.edits_per_minute)
    body = await read_json(request)
    unknown = set(body) - {"display_name"}
    if unknown:
        raise field_error(sorted(unknown)[0], "unknown or read-only field")
    if "display_name" in body:
        name = check_display_name(body["display_name"])
        user = await services(request).store.users.set_display_name(user["id"], name)
    return JSONResponse(user)


async def get_user(request: Request) -> Response:
    await caller(request)
    user = await services(request).store.users.resolve(request.path_params["ref"])
    if not user:
        raise NotFound("no such user")
    return JSONResponse(user)


async def _other(request: Request) -> tuple[str, str]:
    """(caller id, target user id) for graph edits; the target must exist, not be the caller.

    Counts against `graph_changes_per_minute` (429 beyond).
    """
    _, user = await caller(request)
    await limited(request, "graph changes", user["id"],
                  services(request).settings.graph_changes_per_minute)  # fmt: skip
    uid = request.path_params["uid"]
    target = await services(request).store.users.get(uid) if parse.is_user_id(uid) else None
    if not target:
        raise NotFound("no such user")
    if target["id"] == user["id"]:
        raise field_error("user_id", "cannot be yourself")
    return user["id"], target["id"]


async def _tell(request: Request, viewer: str, kind: str, other: str, on: bool) -> None:
    """Publish graph.changed to `viewer`'s inbox so their live tray follows at once."""
    await services(request).store.bus.tell(viewer, events.graph_changed(kind, other, on))


async def put_following(request: Request) -> Response:
    me_id, owner = await _other(request)
    on = request.method == "PUT"
    graph = services(request).store.graph
    changed = await (
        graph.follow(me_id, owner, services(request).store.clock.now_ms())
        if on
        else graph.unfollow(me_id, owner)
    )
    if changed:
        await _tell(request, me_id, "following", owner, on)
    return no_content()


async def put_close_friend(request: Request) -> Response:
    me_id, friend = await _other(request)
    on = request.method == "PUT"
    if await services(request).store.graph.set_close_friend(me_id, friend, on):
        await _tell(request, friend, "close_friend", me_id, on)
    return no_content()


async def put_hidden(request: Request) -> Response:
    me_id, viewer = await _other(request)
    on = request.method == "PUT"
    if await services(request).store.graph.set_hidden(me_id, viewer, on):
        await _tell(request, viewer, "hidden", me_id, on)
    return no_content()


async def _user_page(request: Request, key: str, sorted_set: bool) -> Response:
    offset, limit = paging(request)
    graph = services(request).store.graph
    ids, nxt = await (
        graph.page(key, offset, limit) if sorted_set else graph.set_page(key, offset, limit)
    )
    users = await services(request).store.users.many(ids)
    return JSONResponse(
        {"items": [users[i] for i in ids if i in users], "next_cursor": encode_cursor(nxt)}
    )


async def list_following(request: Request) -> Response:
    _, user = await caller(request)
    return await _user_page(request, services(request).store.keys.following(user["id"]), True)


async def list_close_friends(request: Request) -> Response:
    _, user = await caller(request)
    return await _user_page(request, services(request).store.keys.close_friends(user["id"]), False)


async def list_hidden(request: Request) -> Response:
    _, user = await caller(request)
    return await _user_page(request, services(request).store.keys.hidden(user["id"]), False)


async def list_followers(request: Request) -> Response:
    _, user = await caller(request)
    return await _user_page(request, services(request).store.keys.followers(user["id"]), True)


routes = [
    Route("/auth/dev-login", dev_login, methods=["POST"]),
    Route("/me", me, methods=["GET"]),
    Route("/me", patch_me, methods=["PATCH"]),
    Route("/users/{ref}", get_user, methods=["GET"]),
    Route("/me/following", list_following, methods=["GET"]),
    Route("/me/followers", list_followers, methods=["GET"]),
    Route("/me/following/{uid}", put_following, methods=["PUT", "DELETE"]),
    Route("/me/close-friends", list_close_friends, methods=["GET"]),
    Route("/me/close-friends/{uid}", put_close_friend, methods=["PUT", "DELETE"]),
    Route("/me/hidden", list_hidden, methods=["GET"]),
    Route("/me/hidden/{uid}", put_hidden, methods=["PUT", "DELETE"]),
]
