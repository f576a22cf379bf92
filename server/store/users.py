"""Users: records in Redis, handles unique, auto-provisioned from trusted tokens.

`User = {"id", "handle", "display_name", "avatar_url"}` (PROTOCOL.md). A user a
valid JWT names but we have never seen is created on first use, with its handle
from the `handle` or `preferred_username` claim when that is valid and free.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from server.core.errors import Conflict, field_error
from server.core.keys import Keys
from server.core.parse import is_user_id

HANDLE_RE = re.compile(r"[a-z0-9._]{1,30}")  # matched whole (`fullmatch`)
MAX_DISPLAY_NAME = 64

User = dict[str, Any]


def normalize_handle(raw: Any) -> str:
    """Lower-cased handle. Raises InvalidField (422) unless 1-30 of [a-z0-9._]."""
    if not isinstance(raw, str) or not HANDLE_RE.fullmatch(raw.strip().lower()):
        raise field_error("handle", "1-30 characters of a-z, 0-9, '.' and '_'")
    return raw.strip().lower()


def check_display_name(raw: Any) -> str:
    """A display name of 1-64 printable characters. Raises InvalidField (422)."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_DISPLAY_NAME:
        raise field_error("display_name", f"1-{MAX_DISPLAY_NAME} characters")
    if not raw.isprintable():
        raise field_error("display_name", "must be printable text")
    return raw.strip()


def decode_user(raw: dict[bytes, bytes]) -> User | None:
    """A User from the `HGETALL` of its hash (for callers that pipeline it); None when empty."""
    return _decode(raw)


def _decode(raw: dict[bytes, bytes]) -> User | None:
    if not raw:
        return None
    d = {k.decode(): v.decode() for k, v in raw.items()}
    return {
        "id": d["id"],
        "handle": d["handle"],
        "display_name": d.get("display_name") or d["handle"],
        "avatar_url": d.get("avatar_url") or None,
    }


class UserStore:
    """CRUD over `user:{id}` hashes and the `handle:<h>` → id index."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.r = redis
        self.k = keys

    async def get(self, uid: str) -> User | None:
        return _decode(await self.r.hgetall(self.k.user(uid)))

    def queue_get(self, pipe: Pipeline, uid: str) -> None:
        """Queue `get(uid)`'s read on `pipe`; decode its reply with `decode_user`."""
        pipe.hgetall(self.k.user(uid))

    async def many(self, uids: list[str]) -> dict[str, User]:
        """Users by id, one round trip; unknown ids are left out."""
        if not uids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for uid in uids:
            self.queue_get(pipe, uid)
        found = [_decode(raw) for raw in await pipe.execute()]
        return {u["id"]: u for u in found if u}

    async def by_handle(self, handle: str) -> User | None:
        uid = await self.r.get(self.k.handle(handle.lower()))
        return await self.get(uid.decode()) if uid else None

    async def resolve(self, id_or_handle: str) -> User | None:
        """By id first, then by handle; None for text that is neither (never looked up)."""
        user = await self.get(id_or_handle) if is_user_id(id_or_handle) else None
        if user is None and HANDLE_RE.fullmatch(id_or_handle.lower()):
            user = await self.by_handle(id_or_handle)
        return user

    async def create(
        self, handle: str, display_name: str | None = None, uid: str | None = None
    ) -> User:
        """A new user; raises Conflict (409) when the handle is taken.

        A handle that is another user's id counts as taken: `/users/{ref}` looks
        ids up first, so that handle could never be found, and would pass for
        the user whose id it is.
        """
        uid = uid or "u_" + secrets.token_hex(6)
        if handle != uid and await self.r.exists(self.k.user(handle)):
            raise Conflict(f"handle {handle!r} is taken")
        if not await self.r.set(self.k.handle(handle), uid, nx=True):
            raise Conflict(f"handle {handle!r} is taken")
        fields = {"id": uid, "handle": handle, "display_name": display_name or handle}
        await self.r.hset(self.k.user(uid), mapping=fields)
        return {**fields, "avatar_url": None}

    async def ensure(self, uid: str, claims: dict[str, Any]) -> User:
        """The user `uid`, created from token claims on first use."""
        user = await self.get(uid)
        if user:
            return user
        wanted = claims.get("handle") or claims.get("preferred_username") or uid
        handle = (
            wanted.lower()
            if isinstance(wanted, str) and HANDLE_RE.fullmatch(wanted.lower())
            else None
        )
        candidates = [handle] if handle else []
        candidates.append(f"user_{secrets.token_hex(4)}")
        name = claims.get("name") if isinstance(claims.get("name"), str) else None
        for candidate in candidates:
            try:
                return await self.create(candidate, name, uid=uid)
            except Conflict:
                continue
        raise Conflict("could not allocate a handle")

    async def login(self, handle: str) -> User:
        """Dev login: the user with `handle`, created on first use."""
        user = await self.by_handle(handle)
        if user:
            return user
        try:
            return await self.create(handle)
        except Conflict:  # a concurrent login created it, or the handle is someone's id
            found = await self.by_handle(handle)
            if found is None:
                raise
            return found

    async def set_display_name(self, uid: str, name: str) -> User:
        await self.r.hset(self.k.user(uid), "display_name", name)
        user = await self.get(uid)
        assert user is not None
        return user
