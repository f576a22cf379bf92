"""The hub's event handling, without sockets.

Every event type `events.py` builds has a handler in the hub's table (or is
deliberately forwarded as it is); a type without one is logged and dropped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import orjson
import pytest

from server.core import events
from server.core.clock import ManualClock
from server.core.frames import Encoded
from server.core.keys import Keys
from server.core.settings import Settings
from server.core.signing import MediaSigner
from server.push.connection import Connection
from server.push.hub import Hub
from server.services import redis_client
from server.store.graph import Graph
from server.store.scripts import Scripts
from server.store.storage import LocalStorage
from server.store.store import Store
from server.store.users import UserStore
from server.stories.reader import StoryReader

NOW = 1_800_000_000_000
FORWARDED = {events.STORY_REACTION, events.STORY_REPLY, events.CAPTURE_FINISHED,
             events.CAPTURE_FAILED}  # fmt: skip


class RecordingWire:
    """Records every frame written to it (packed arrays flattened), as a socket would get it."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send(self, payload: Encoded) -> asyncio.Task[None] | None:
        data = orjson.loads(payload.data)
        self.frames.extend(data if isinstance(data, list) else [data])
        return None

    def gone(self) -> bool:
        return False

    def end(self) -> None:
        return None


async def _closed(code: int, reason: str) -> None:
    return None


@pytest.fixture
def hub(redis_url: str, tmp_path: Any) -> Hub:
    client = redis_client(redis_url)  # never used by these tests: nothing here reads Redis
    keys = Keys("hubcore:")
    store = Store(client, keys, Scripts(client), UserStore(client, keys), Graph(client, keys),
                  MediaSigner(b"k"), LocalStorage(tmp_path), ManualClock(NOW),
                  Settings(redis_prefix="hubcore:"))  # fmt: skip
    return Hub(store, StoryReader(store))


def _sample_args(fn: Any) -> list[Any]:
    """Arguments of the right shape for an `events.py` constructor, from its annotations."""
    samples = {"str": "u_1", "int": 1, "bool": True, "Json": {}, "Json | None": None}
    return [samples[p.annotation] for p in inspect.signature(fn).parameters.values()]


def test_every_event_type_built_has_a_handler(hub: Hub) -> None:
    built = set()
    for name, fn in inspect.getmembers(events, inspect.isfunction):
        if fn.__module__ == events.__name__ and name != "encode":
            built.add(fn(*_sample_args(fn))["type"])
    assert built == events.TYPES
    assert set(hub.handlers) == events.TYPES
    forwarded = {t for t, h in hub.handlers.items() if h == hub._forward}
    assert forwarded == FORWARDED  # the rest change hub or connection state first


async def test_an_unknown_type_is_logged_once_and_dropped(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    wire = RecordingWire()
    conn = Connection({"id": "u_1"}, wire, _closed, 1 << 20)
    channel = hub.s.keys.inbox_channel("u_1")
    hub.conns.add(conn)
    hub.interest.join(conn, [channel])
    conn.ready = True
    with caplog.at_level(logging.WARNING, logger="stories.hub"):
        hub.on_message(channel, orjson.dumps({"type": "story.neww", "owner_id": "u_2"}))
        hub.on_message(channel, orjson.dumps({"type": "story.neww", "owner_id": "u_3"}))
        hub.on_message(channel, orjson.dumps({"type": ["x"]}))
    warned = [r.getMessage() for r in caplog.records if r.name == "stories.hub"]
    assert warned == [
        f"dropping event of unknown type 'story.neww' on {channel}",
        f"dropping event of unknown type \"['x']\" on {channel}",
    ]
    hub.on_message(channel, orjson.dumps(events.story_reply("u_1:1", {"id": "u_2"}, "hi")))
    await asyncio.sleep(0)
    assert [f["type"] for f in wire.frames] == ["story.reply"]  # known types still go out
