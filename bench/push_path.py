"""The push hot path alone, socket-free: one process, N connections, P posts, then exit.

`python bench/push_path.py N P` builds the hub of whatever `server` package is first
on `sys.path` (this tree's, or another ref's exported by `bench/push_instructions.py`),
N signed-in connections following one creator, each on a wire that drops what it is
given (no socket, no syscall), and hands the hub P `story.new` publications exactly
as the broker would (`Hub.on_message`), letting the dispatcher flush after each. What
it measures is what the restructure of issue 10 touched: decode, handler lookup,
audience per view, frames, outbox, dispatch. It prints nothing: it is meant to run
under `valgrind --tool=callgrind`, which counts the instructions.

It imports the hub by either layout (`server.push.hub`, or the flat `server.hub` of
before the restructure) and builds it by either constructor.
"""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace
from typing import Any


def _modules() -> SimpleNamespace:
    try:
        from server.core import events
        from server.core.clock import ManualClock
        from server.core.keys import Keys
        from server.core.settings import Settings
        from server.push.connection import Connection
        from server.push.hub import Hub
        from server.push.owner_cache import OwnerCache
    except ImportError:  # the flat layout, before the layer packages
        from server.clock import ManualClock  # type: ignore[no-redef]
        from server.connection import Connection  # type: ignore[no-redef]
        from server.hub import Hub  # type: ignore[no-redef]
        from server.keys import Keys  # type: ignore[no-redef]
        from server.owner_cache import OwnerCache  # type: ignore[no-redef]
        from server.settings import Settings  # type: ignore[no-redef]

        from server import events  # type: ignore[no-redef,attr-defined]
    return SimpleNamespace(events=events, ManualClock=ManualClock, Keys=Keys, Settings=Settings,
                           Connection=Connection, Hub=Hub, OwnerCache=OwnerCache)  # fmt: skip


SENT = [0]


class DropWire:
    """A wire that takes every frame and sends it nowhere (counted, to check the run)."""

    def send(self, payload: Any) -> None:
        SENT[0] += 1

    def gone(self) -> bool:
        return False

    def end(self) -> None:
        return None


async def _close(code: int, reason: str) -> None:
    return None


def make_hub(m: SimpleNamespace) -> Any:
    settings, keys, clock = m.Settings(), m.Keys(), m.ManualClock()
    try:
        return m.Hub(None, keys, settings, clock)  # Hub(source, keys, settings, clock)
    except TypeError:
        return m.Hub(SimpleNamespace(settings=settings, keys=keys, clock=clock), None)


async def main(followers: int, posts: int) -> None:
    m = _modules()
    hub = make_hub(m)
    creator = {"id": "c0001", "handle": "c0001", "display_name": "Creator", "avatar_url": None}
    channel = m.Keys().stories_channel(creator["id"])
    hub.owners[creator["id"]] = m.OwnerCache(user=creator)
    following = frozenset([creator["id"]])
    for i in range(followers):
        uid = f"f{i:05d}"
        user = {"id": uid, "handle": uid, "display_name": uid, "avatar_url": None}
        conn = m.Connection(user, DropWire(), _close, 1 << 20)
        conn.following, conn.ready = following, True
        hub.conns.add(conn)
        hub.interest.join(conn, [channel])
    now = 1_800_000_000_000
    for seq in range(1, posts + 1):
        item = {"id": f"c0001.{seq}", "owner": creator, "source": "upload",
                "media": {"kind": "image", "url": "/media/x", "poster_url": "/media/y"},
                "caption": "bench", "audience": "followers", "created_at": "t",
                "expires_at": "t", "shared_from": None, "seen": False, "view_count": None}  # fmt: skip
        event = m.events.story_new(creator["id"], seq, "followers", now, now + 86_400_000, item)
        hub.on_message(channel, m.events.encode(event))
        for _ in range(3):  # the dispatcher flushes on the next loop iteration
            await asyncio.sleep(0)
    if SENT[0] != followers * posts:
        raise SystemExit(f"{SENT[0]} frames sent, {followers * posts} expected")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
