"""Every Redis key and channel name, in one place, under one configurable prefix.

Keys of one owner carry the hash tag `{owner}` so they live on one Cluster slot;
keys of one viewer carry `{viewer}`. Item ids are `<owner>.<seq>`: `seq` comes
from the owner's counter, so "seen up to seq N" is one number per owner (the
max-read-id model, as Telegram uses for stories).

The indexes over every owner (active owners, the expiry and media-gc schedules)
and the sweeper's lock are split into `BUCKETS` buckets, each under the hash tag
`{b<n>}`, so that no one Cluster slot carries them all. An owner's bucket is
`bucket(owner id)`, an item's is `bucket(item id)`: stable across processes,
hosts and restarts (CRC-32, not Python's salted `hash`).
"""

from __future__ import annotations

import zlib

from server.core.parse import split_item_id

__all__ = ["BUCKETS", "Keys", "bucket", "item_id", "split_item_id"]

BUCKETS = 16  # buckets of each global index; changing it moves every entry (see Keys)


def bucket(name: str | bytes) -> int:
    """The bucket (0 to BUCKETS - 1) of an owner id or item id: CRC-32 of its UTF-8 bytes."""
    return zlib.crc32(name.encode() if isinstance(name, str) else name) % BUCKETS


def item_id(owner_id: str, seq: int) -> str:
    """`("u_ab", 7)` → `"u_ab.7"`."""
    return f"{owner_id}.{seq}"


class Keys:
    """Key and channel names under `prefix` (default `st1:`)."""

    def __init__(self, prefix: str = "st1:") -> None:
        self.p = prefix

    # users
    def user(self, uid: str) -> str:
        return f"{self.p}user:{{{uid}}}"

    def handle(self, handle: str) -> str:
        return f"{self.p}handle:{handle}"

    # graph
    def following(self, uid: str) -> str:
        return f"{self.p}fw:{{{uid}}}:following"

    def followers(self, uid: str) -> str:
        return f"{self.p}fw:{{{uid}}}:followers"

    def close_friends(self, owner: str) -> str:
        return f"{self.p}cf:{{{owner}}}"

    def close_friend_of(self, viewer: str) -> str:
        return f"{self.p}cfof:{{{viewer}}}"

    def hidden(self, owner: str) -> str:
        return f"{self.p}hid:{{{owner}}}"

    def hidden_from(self, viewer: str) -> str:
        return f"{self.p}hidfrom:{{{viewer}}}"

    # stories
    def seq(self, owner: str) -> str:
        return f"{self.p}st:{{{owner}}}:seq"

    def items(self, owner: str) -> str:
        return f"{self.p}st:{{{owner}}}:items"

    def item(self, owner: str, seq: int) -> str:
        return f"{self.p}st:{{{owner}}}:item:{seq}"

    def shares(self, owner: str, seq: int) -> str:
        """SET of the ids of every share of item `seq` (on the source owner's slot)."""
        return f"{self.p}st:{{{owner}}}:shares:{seq}"

    def archive(self, owner: str) -> str:
        return f"{self.p}st:{{{owner}}}:archive"

    def views(self, owner: str, seq: int) -> str:
        return f"{self.p}views:{{{owner}}}:{seq}"

    def reactions(self, owner: str, seq: int) -> str:
        return f"{self.p}rx:{{{owner}}}:{seq}"

    def replies(self, owner: str, seq: int) -> str:
        return f"{self.p}rp:{{{owner}}}:{seq}"

    def seen(self, viewer: str) -> str:
        return f"{self.p}seen:{{{viewer}}}"

    # schedules, gates, locks: one key per bucket (`BUCKETS`, hash tag `{b<n>}`)
    def expiry_schedule(self, n: int) -> str:
        """ZSET item id → expires_at of bucket `n`: the items the sweeper ends when due."""
        return f"{self.p}sched:expire:{{b{n}}}"

    def expiry_schedule_of(self, item: str) -> str:
        """The expiry schedule bucket that holds item id `item`."""
        return self.expiry_schedule(bucket(item))

    def active_owners(self, n: int) -> str:
        """ZSET owner → latest `expires_at` of their items, bucket `n`: who may have a ring."""
        return f"{self.p}act:owners:{{b{n}}}"

    def active_owners_of(self, owner: str) -> str:
        """The active-owners bucket that holds `owner`."""
        return self.active_owners(bucket(owner))

    def media_gc_schedule(self, n: int) -> str:
        """ZSET item id → when its files may go (archive retention over), bucket `n`."""
        return f"{self.p}sched:mediagc:{{b{n}}}"

    def media_gc_schedule_of(self, item: str) -> str:
        """The media-gc schedule bucket that holds item id `item`."""
        return self.media_gc_schedule(bucket(item))

    def sweeper_lock(self, n: int) -> str:
        """The lock of bucket `n`'s sweep: one process at a time sweeps each bucket."""
        return f"{self.p}lock:sweeper:{{b{n}}}"

    def legacy_global_indexes(self) -> tuple[str, str, str]:
        """`(expiry schedule, active owners, media-gc schedule)` as one key each, before the
        buckets: read once at startup to move their entries (`store/migrate.py`)."""
        return f"{self.p}sched:expire", f"{self.p}act:owners", f"{self.p}sched:mediagc"

    def rollout(self) -> str:
        return f"{self.p}rollout"

    def idempotency(self, uid: str, key: str) -> str:
        return f"{self.p}idem:{{{uid}}}:{key}"

    def rate(self, uid: str, what: str, window: int) -> str:
        return f"{self.p}rl:{{{uid}}}:{what}:{window}"

    def demo_seeded(self) -> str:
        return f"{self.p}demo:seeded"

    def deployment_secret(self, name: str) -> str:
        """A secret every process and host on this Redis shares (`store/secrets.py`)."""
        return f"{self.p}secret:{name}"

    # channels: each under its user's hash tag, the slot of that user's keys, so a script
    # writing an owner's keys SPUBLISHes on its own slot on a cluster (store/bus.py)
    def stories_channel(self, owner: str) -> str:
        """Lifecycle of an owner's items (story.new, story.removed, audience changes).

        For followers' processes only: every event published here goes to the
        owner's `inbox_channel` too (the same Lua call), which is where the
        owner's own devices get it; so a socket needs one channel of its own.
        """
        return f"{self.p}ev:{{{owner}}}:stories"

    def inbox_channel(self, uid: str) -> str:
        """Personal events: seen-by, view counts, seen sync, replies, capture results, graph;
        and the lifecycle of the user's own items (as on their `stories_channel`)."""
        return f"{self.p}ev:{{{uid}}}:inbox"

    def canary_channel(self, node_id: str) -> str:
        """A broker's own canary channel (on a cluster, one per node: `node_id` names a
        slot of that node, see push/sharded.py)."""
        return f"{self.p}ev:canary:{node_id}"
