"""One local WebSocket connection as the hub sees it: identity, relations, outbox.

The hub filters every pushed event through `relation()`, built from sets
loaded at connect time and kept current by `graph.changed` events, so no
Redis read happens per recipient.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from server.audience import Relation
from server.keys import Keys
from server.outbox import Outbox, ViewCountCoalescer

SendText = Callable[[str], Coroutine[Any, Any, None]]
Close = Callable[[int, str], Awaitable[None]]


class Connection:
    """A signed-in socket: `send_text`/`close` are the transport's coroutines."""

    def __init__(
        self, user: dict[str, Any], send_text: SendText, close: Close, max_queue_bytes: int
    ) -> None:
        self.id = secrets.token_hex(8)
        self.user = user
        self.user_id: str = user["id"]
        self.send_text = send_text
        self.close = close
        self.outbox = Outbox(max_queue_bytes)
        self.coalescer = ViewCountCoalescer(260)  # any 1 s window holds at most 4
        self.count_timer: asyncio.TimerHandle | None = None
        self.following: set[str] = set()
        self.close_friend_of: set[str] = set()
        self.hidden_from: set[str] = set()
        self.seen: dict[str, int] = {}
        self.ready = False  # the snapshot was queued; earlier events are covered by it
        self.closing = False
        self.dirty = False  # waiting for the hub's next flush
        self.sending: asyncio.Task[None] | None = None  # a send blocked by backpressure

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
