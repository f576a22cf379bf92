"""One local WebSocket connection as the hub sees it: identity, relations, outbox.

The hub filters every pushed event through `relation()`, built from sets
loaded at connect time and kept current by `graph.changed` events, so no
Redis read happens per recipient.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from server.audience import Relation
from server.keys import Keys
from server.outbox import Outbox, ViewCountCoalescer
from server.wire import Wire

Close = Callable[[int, str], Awaitable[None]]
NOBODY: frozenset[str] = frozenset()


class Connection:
    """A signed-in socket: frames go out through `wire`; `close(code, reason)` closes it.

    Thousands are held per process, so the instance is slotted, its relation
    sets are frozensets (the empty one shared; owner ids interned by the hub),
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
        self.seen: dict[str, int] = {}
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
        """Whether `owner` can have a ring in this viewer's tray at all."""
        return owner == self.user_id or (owner in self.following and owner not in self.hidden_from)

    def channels(self, keys: Keys) -> set[str]:
        """Every channel this connection needs: its inbox, its own and followed stories."""
        owners = {self.user_id} | (self.following - self.hidden_from)
        return {keys.inbox_channel(self.user_id)} | {keys.stories_channel(o) for o in owners}
