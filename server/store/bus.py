"""The one publisher of events: which channels an event goes to, and its bytes.

Two kinds of event (DESIGN.md, "Channels"):
- **lifecycle** of an owner's items (story.new, story.removed, story.audience,
  story.source_audience): on the owner's stories channel, which every process
  with a follower of the owner subscribes to, and on the owner's inbox, which
  is the one channel the owner's own sockets hold (one subscription per user);
- **personal** events for one user (seen-by, view counts, seen sync, replies,
  reactions, graph changes, capture results): on that user's inbox only.

Writes that must publish atomically with their Redis change (post, end, audience)
publish from their Lua script; the Bus hands those scripts the channels and the
payload (`lifecycle_args`), so this module is still the only place that decides
where an event goes. Every key and channel name comes from `Keys`.

One Redis: classic PUBLISH. A Redis Cluster: sharded SPUBLISH, so a message
goes to the shard of its channel's slot only, not over the whole cluster bus.
Every channel carries its user's hash tag (`{owner}` / `{uid}`, as their keys
do), so a script SPUBLISHes on its own slot; the scripts get the command to
use as an ARGV entry (`lifecycle_args`).
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from server.core import events
from server.core.keys import Keys

Event = dict[str, Any]


class Queue(Protocol):
    """Where the Bus queues a PUBLISH: a redis-py pipeline (one Redis or a Cluster's), a `Batch`.

    By `execute_command("PUBLISH" | "SPUBLISH", ...)`: a Cluster pipeline refuses the
    `publish` method (and routes SPUBLISH by its channel's slot).
    """

    def execute_command(self, *args: Any) -> Any: ...


class Bus:
    """Publishes events over Redis pub/sub (`redis`), channel names from `keys`.

    `command` is "PUBLISH" on one Redis, "SPUBLISH" on a `RedisCluster`.
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.command = "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"

    def lifecycle_args(self, owner: str, event: Event) -> list[str | bytes]:
        """`[stories channel, payload, inbox channel, command]`: the ARGV a write script
        publishes with (`command` is "PUBLISH" or "SPUBLISH", see the class).

        The scripts (`lua/post_item.lua`, `end_item.lua`, `set_audience.lua`)
        publish the payload on both channels in the same atomic step as the write;
        both channels are on `owner`'s slot, like the keys the script writes.
        """
        return [
            self.keys.stories_channel(owner),
            events.encode(event),
            self.keys.inbox_channel(owner),
            self.command,
        ]

    def lifecycle(self, pipe: Queue, owner: str, event: Event) -> None:
        """Queue a lifecycle event of `owner`'s items on `pipe` (both channels, one payload)."""
        payload = events.encode(event)
        pipe.execute_command(self.command, self.keys.stories_channel(owner), payload)
        pipe.execute_command(self.command, self.keys.inbox_channel(owner), payload)

    def personal(self, pipe: Queue, uid: str, event: Event) -> None:
        """Queue a personal event for user `uid` on `pipe` (their inbox)."""
        pipe.execute_command(self.command, self.keys.inbox_channel(uid), events.encode(event))

    async def tell(self, uid: str, event: Event) -> None:
        """Publish one personal event for user `uid` now (one round trip)."""
        await self.redis.execute_command(
            self.command, self.keys.inbox_channel(uid), events.encode(event)
        )
