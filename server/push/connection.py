"""One local WebSocket connection as the hub sees it: identity, relations, outbox.

The hub filters every pushed event through `relation()`, built from sets
loaded at connect time and kept current by `graph.changed` events, so no
Redis read happens per recipient.

Channels (`channels()`): a socket listens on its user's inbox, which also
carries the lifecycle of the user's own stories (for their other devices), and
on the stories channel of every followed owner who does not hide from them:
one channel per user plus one per owner in the tray. The hub keeps its
interest table equal to `channels()` at every moment, so a socket that goes
leaves exactly these, without a search.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from server.core.audience import Relation
from server.core.keys import Keys
from server.core.outbox import Outbox, ViewCountCoalescer
from server.core.tray import in_tray
from server.push.wire import Wire

Close = Callable[[int, str], Awaitable[None]]
NOBODY: frozenset[str] = frozenset()
NOTHING_SEEN: Mapping[str, int] = MappingProxyType({})  # shared, and read-only so it stays empty


class Connection:
    """A signed-in socket: frames go out through `wire`; `close(code, reason)` closes it.

    Thousands are held per process, so the instance is slotted, its relation
    sets are frozensets (the empty one shared; owner ids interned by the hub),
    the seen map is a shared empty mapping until something is seen (`see`),
    and the view-count coalescer exists only once the user's stories are viewed.
    """

    __slots__ = (
        "_coalescer", "close", "close_friend_of", "closing", "count_timer", "dirty",
        "following", "hidden_from", "id", "outbox", "ready", "seen", "sending", "user",
        "user_id", "wire", "written_in",
    )  # fmt: skip

    def __init__(
        self, user: dict[str, Any], wire: Wire, close: Close, max_queue_bytes: int
    ) -> None:
        self.id = secrets.token_hex(8)
        self.user = user
        self.user_id: str = user["id"]
        self.wire = wire
        self.close = close
        self.outbox = Outbox(max_queue_bytes)
        self._coalescer: ViewCountCoalescer | None = None
        self.count_timer: asyncio.TimerHandle | None = None
        self.following: frozenset[str] = NOBODY
        self.close_friend_of: frozenset[str] = NOBODY
        self.hidden_from: frozenset[str] = NOBODY
        self.seen: Mapping[str, int] = NOTHING_SEEN  # owner → highest seq seen
        self.ready = False  # the snapshot was queued; earlier events are covered by it
        self.closing = False
        self.dirty = False  # waiting for the dispatcher's next flush
        self.written_in = 0  # the dispatcher's iteration in which a frame was last written at once
        self.sending: asyncio.Task[None] | None = None  # a send blocked by backpressure

    @property
    def coalescer(self) -> ViewCountCoalescer:
        """This user's `story.view_count` limiter, made on first use."""
        if self._coalescer is None:
            self._coalescer = ViewCountCoalescer(260)  # any 1 s window holds at most 4
        return self._coalescer

    def relation(self, owner: str) -> Relation:
        if owner == self.user_id:
            return Relation(is_owner=True)
        return Relation(
            follows=owner in self.following,
            close_friend=owner in self.close_friend_of,
            hidden=owner in self.hidden_from,
        )

    def in_tray(self, owner: str) -> bool:
        """Whether `owner` can have a ring in this viewer's tray at all (`tray.in_tray`)."""
        return in_tray(owner == self.user_id, owner in self.following, owner in self.hidden_from)

    def see(self, owner: str, seq: int) -> None:
        """Record that this user has seen `owner`'s items up to `seq`."""
        seen = self.seen if isinstance(self.seen, dict) else {}
        seen[owner] = seq
        self.seen = seen

    def followed_owners(self) -> frozenset[str]:
        """Owners whose stories channel this connection is on: followed, not hiding, not self."""
        owners = self.following - self.hidden_from
        return owners - {self.user_id} if self.user_id in owners else owners

    def tray_owners(self) -> list[str]:
        """Every owner who can have a ring in this tray: the user, then followed owners."""
        return [self.user_id, *self.followed_owners()]

    def channels(self, keys: Keys) -> list[str]:
        """Every channel this connection is on: its inbox, then followed owners' stories."""
        return [keys.inbox_channel(self.user_id)] + [
            keys.stories_channel(o) for o in self.followed_owners()
        ]
