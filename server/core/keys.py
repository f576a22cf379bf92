"""Every Redis key and channel name, in one place, under one configurable prefix.

Keys of one owner carry the hash tag `{owner}` so they live on one Cluster slot;
keys of one viewer carry `{viewer}`. Item ids are `<owner>.<seq>`: `seq` comes
from the owner's counter, so "seen up to seq N" is one number per owner (the
max-read-id model, as Telegram uses for stories).
"""

from __future__ import annotations

from server.core.parse import split_item_id

__all__ = ["Keys", "item_id", "split_item_id"]


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

    # schedules, gates, locks
    def expiry_schedule(self) -> str:
        return f"{self.p}sched:expire"

    def active_owners(self) -> str:
        """ZSET owner → latest `expires_at` of their items: who may have a ring at all."""
        return f"{self.p}act:owners"

    def media_gc_schedule(self) -> str:
        return f"{self.p}sched:mediagc"

    def sweeper_lock(self) -> str:
        return f"{self.p}lock:sweeper"

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

    # channels
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
        return f"{self.p}ev:canary:{node_id}"
