"""What the hub needs from storage, as a small Protocol over plain data.

The hub reads Redis at three moments only: a socket signing in (its relation
sets, seen map, maybe its User and its own active items), owner caches being
filled (owners' Users and active items), and the sources of shares among
those items. `HubSource` names those reads; `RedisHubSource` is the one
implementation, built from the store's scripts and the reader's and user
store's reads, so the hub holds no Redis code of its own and its rules can be
tested over in-memory data (tests/test_hub_core.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from server.core.tray import ActiveItem
from server.push.connection import NOBODY
from server.store.store import Store
from server.store.users import User, decode_user
from server.stories.reader import StoryReader, active_from_reply
from server.stories.shares import Source, load_sources


@dataclass(frozen=True, slots=True)
class SignInRead:
    """One user's state at sign-in.

    Relation sets are user ids (interned); `seen` maps owner id → highest seq
    seen. `user` is the stored User when it was asked for (None: not asked, or
    unknown); `items` the user's own active items when asked for (None: not asked).
    """

    following: frozenset[str]
    close_friend_of: frozenset[str]
    hidden_from: frozenset[str]
    seen: dict[str, int]
    user: User | None = None
    items: list[ActiveItem] | None = None


@dataclass(frozen=True, slots=True)
class OwnerRead:
    """An owner's User (None when unknown) and active items (any audience, unexpired)."""

    user: User | None
    items: list[ActiveItem]


class HubSource(Protocol):
    """Storage reads of the hub. Each raises the storage's errors (redis errors for Redis)."""

    async def sign_in(self, uid: str, *, with_user: bool, with_items: bool) -> SignInRead:
        """`uid`'s relation sets and seen map; its User and its own active items on request."""
        ...

    async def ensure_user(self, uid: str, claims: dict[str, Any]) -> User:
        """The User `uid`, created from a token's `claims` when it is not stored yet."""
        ...

    async def owners(self, owners: list[str], known: User | None) -> dict[str, OwnerRead]:
        """Every owner's User and active items; `known` (a User already read) is not read again."""
        ...

    async def sources(self, ids: set[str]) -> dict[str, Source]:
        """The stored sources among share-source ids `ids`, any status; missing ones left out."""
        ...


def _ids(members: list[bytes] | set[bytes]) -> frozenset[str]:
    """User ids from Redis, interned: thousands of connections share one string per owner."""
    # from a set, not a generator: a frozenset copied from a set is sized once (half the table)
    return frozenset({sys.intern(m.decode()) for m in members}) if members else NOBODY


def _pairs(flat: list[Any]) -> Iterable[tuple[Any, Any]]:
    return zip(flat[::2], flat[1::2], strict=True)


class RedisHubSource:
    """`HubSource` over Redis: one `sign_in.lua` call, one pipeline per owner batch."""

    def __init__(self, store: Store, reader: StoryReader) -> None:
        self.s = store
        self.reader = reader

    async def sign_in(self, uid: str, *, with_user: bool, with_items: bool) -> SignInRead:
        """One call of `lua/sign_in.lua` (one slot: every key is the user's)."""
        k = self.s.keys
        keys = [k.following(uid), k.close_friend_of(uid), k.hidden_from(uid), k.seen(uid),
                k.items(uid), k.user(uid)]  # fmt: skip
        args = [self.reader.active_floor() if with_items else "", "1" if with_user else ""]
        following, cfof, hidden, seen, items, user = await self.s.scripts.sign_in(keys, args)
        return SignInRead(
            _ids(following),
            _ids(cfof),
            _ids(hidden),
            {sys.intern(o.decode()): int(v) for o, v in _pairs(seen)} if seen else {},
            decode_user(dict(_pairs(user))) if with_user else None,
            active_from_reply(_pairs(items)) if with_items else None,
        )

    async def ensure_user(self, uid: str, claims: dict[str, Any]) -> User:
        return await self.s.users.ensure(uid, claims)

    async def owners(self, owners: list[str], known: User | None) -> dict[str, OwnerRead]:
        """One pipeline: each owner's User hash (but `known`'s) and active items."""
        pipe = self.s.redis.pipeline(transaction=False)
        for owner in owners:
            if known is None or known["id"] != owner:
                self.s.users.queue_get(pipe, owner)
            self.reader.queue_active_items(pipe, owner)
        replies = iter(await pipe.execute())
        out = {}
        for owner in owners:
            user = known if known and known["id"] == owner else decode_user(next(replies))
            out[owner] = OwnerRead(user, active_from_reply(next(replies)))
        return out

    async def sources(self, ids: set[str]) -> dict[str, Source]:
        return await load_sources(self.s, ids)
