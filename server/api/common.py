"""Helpers every HTTP endpoint shares: the caller, JSON bodies, paging."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request

from server.core import parse
from server.core.auth import Principal, bearer_token
from server.core.errors import BadRequest, PayloadTooLarge, field_error
from server.store.limits import rate_limit
from server.store.users import User

if TYPE_CHECKING:
    from server.services import Services

MAX_JSON_BYTES = 64 * 1024
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_OFFSET = 10**15  # offset + limit must stay a Redis integer (a cursor we issued is far below)


def services(request: Request) -> Services:
    """The lifespan-built services of the app handling `request`."""
    svc: Services = request.app.state.services
    return svc


async def caller(request: Request) -> tuple[Principal, User]:
    """The authenticated caller and their User (created on first use). Raises 401."""
    svc = services(request)
    principal = svc.auth.verify(bearer_token(request.headers.get("authorization")))
    user = await svc.store.users.ensure(principal.user_id, principal.claims)
    return principal, user


async def limited(request: Request, what: str, subject: str, per_minute: int) -> None:
    """Count one call of `what` for `subject` (a user id, or `client_key`); 429 beyond
    `per_minute` this clock minute. One Redis round trip."""
    svc = services(request)
    await rate_limit(svc.store.redis, svc.store.keys, subject, what, per_minute,
                     svc.store.clock.now_ms())  # fmt: skip


def client_key(request: Request) -> str:
    """`ip:<address>` of the peer, the subject of limits on calls without a user.

    uvicorn takes the address from `X-Forwarded-For` when the peer is a trusted
    proxy (`FORWARDED_ALLOW_IPS`, default 127.0.0.1), else it is the peer's own.
    """
    return f"ip:{request.client.host if request.client else 'unknown'}"


async def read_json(request: Request, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The body as a JSON object. Raises 413 when larger than `max_bytes`, 400 when malformed."""
    declared = parse.content_length(request.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(f"JSON bodies are limited to {max_bytes} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"JSON bodies are limited to {max_bytes} bytes")
    if not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def encode_cursor(offset: int | None) -> str | None:
    """The `next_cursor` of a page that continues at `offset`; None for the last page."""
    return None if offset is None else parse.encode_offset_cursor(offset)


def paging(request: Request) -> tuple[int, int]:
    """`(offset, limit)` from `?cursor=&limit=`. Raises 422 on a bad cursor or limit."""
    limit = limit_only(request)
    cursor = request.query_params.get("cursor")
    if not cursor:
        return 0, limit
    offset = parse.offset_cursor(cursor)
    if offset is None or offset > MAX_OFFSET:
        raise field_error("cursor", "not a cursor this endpoint issued")
    return offset, limit


def limit_only(request: Request) -> int:
    """`?limit=` (1-100, default 20). Raises 422 otherwise."""
    limit = parse.int_in(request.query_params.get("limit", str(DEFAULT_LIMIT)), 1, MAX_LIMIT)
    if limit is None:
        raise field_error("limit", f"an integer 1-{MAX_LIMIT}")
    return limit


async def post_gate(request: Request) -> tuple[Principal, User]:
    """Caller, rollout gate (403) and post rate limit (429)."""
    principal, user = await caller(request)
    svc = services(request)
    country = principal.claims.get(svc.settings.jwt_country_claim)
    await svc.rollout.check(
        user["id"], user["handle"], country if isinstance(country, str) else None
    )
    await limited(request, "posts", user["id"], svc.settings.posts_per_minute)
    return principal, user
