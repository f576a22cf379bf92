"""The hub's rules without sockets or Redis: the exact frames each viewer gets.

The hub reads storage only through a `HubSource` (`push/source.py`); here it is
`FakeSource`, in-memory dicts (the one fake these tests use). Frames go out
through the real dispatcher to `RecordingWire`s, which keep every frame as the
client would parse it (packed arrays flattened, in order). The broker is the
real one, never started: with its link down, `acquire` and `release` only count
references. Events are handed to `Hub.on_message` as the broker would, on the
channels `store/bus.py` publishes them on.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from server.core import events
from server.core.clock import ManualClock, rfc3339
from server.core.frames import Encoded
from server.core.keys import Keys, item_id
from server.core.settings import Settings
from server.core.tray import ActiveItem
from server.push.broker import Broker
from server.push.connection import Connection
from server.push.hub import Hub
from server.push.source import OwnerRead, SignInRead
from server.stories.shares import Source

NOW = 1_800_000_000_000
HOUR = 3_600_000
FORWARDED = {events.STORY_REACTION, events.STORY_REPLY, events.CAPTURE_FINISHED,
             events.CAPTURE_FAILED}  # fmt: skip
ALICE, BOB, CAROL, DAVE, ERIN = "u_alice", "u_bob", "u_carol", "u_dave", "u_erin"


def user(uid: str) -> dict[str, Any]:
    name = uid[2:]
    return {"id": uid, "handle": name, "display_name": name.title(), "avatar_url": None}


@dataclass
class FakeSource:
    """An in-memory `HubSource` (the one fake of these tests): users, relations, seen, items.

    `follows[v]` are the owners v follows, `close_friend_of[v]` the owners whose
    close friends v is among, `hidden_from[v]` the owners hiding from v.
    """

    clock: ManualClock
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    follows: dict[str, set[str]] = field(default_factory=dict)
    close_friend_of: dict[str, set[str]] = field(default_factory=dict)
    hidden_from: dict[str, set[str]] = field(default_factory=dict)
    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    items: dict[str, list[ActiveItem]] = field(default_factory=dict)
    sources_by_id: dict[str, Source] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)  # what was asked, in order

    def _active(self, owner: str) -> list[ActiveItem]:
        return [i for i in self.items.get(owner, []) if i.expires_ms > self.clock.now_ms()]

    async def sign_in(self, uid: str, *, with_user: bool, with_items: bool) -> SignInRead:
        self.reads.append(f"sign_in {uid}")
        return SignInRead(
            frozenset(self.follows.get(uid, ())), frozenset(self.close_friend_of.get(uid, ())),
            frozenset(self.hidden_from.get(uid, ())), dict(self.seen.get(uid, {})),
            self.users.get(uid) if with_user else None,
            self._active(uid) if with_items else None,
        )  # fmt: skip

    async def ensure_user(self, uid: str, claims: dict[str, Any]) -> dict[str, Any]:
        return self.users.setdefault(uid, user(uid))

    async def owners(self, owners: list[str], known: dict[str, Any] | None) -> dict[str, OwnerRead]:
        self.reads.append(f"owners {sorted(owners)}")
        return {o: OwnerRead(self.users.get(o), self._active(o)) for o in owners}

    async def sources(self, ids: set[str]) -> dict[str, Source]:
        self.reads.append(f"sources {sorted(ids)}")
        return {i: self.sources_by_id[i] for i in ids if i in self.sources_by_id}


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

    def take(self) -> list[dict[str, Any]]:
        out, self.frames = self.frames, []
        return out


async def _closed(code: int, reason: str) -> None:
    return None


class World:
    """A hub over a `FakeSource`, with a signed-in socket per user."""

    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        self.src = FakeSource(self.clock)
        self.keys = Keys("hubcore:")
        self.hub = Hub(self.src, self.keys, Settings(redis_prefix="hubcore:"), self.clock)
        self.broker = Broker(None, self.hub, "canary")  # type: ignore[arg-type]  # never started
        self.hub.bind(self.broker)
        self.wires: dict[str, RecordingWire] = {}
        for uid in (ALICE, BOB, CAROL, DAVE, ERIN):
            self.src.users[uid] = user(uid)

    def post(self, owner: str, seq: int, audience: str, created_ms: int,
             source: Source | None = None) -> ActiveItem:  # fmt: skip
        item = ActiveItem(seq, audience, created_ms, NOW + HOUR, source.id if source else None)
        self.src.items.setdefault(owner, []).append(item)
        return item

    async def connect(self, uid: str) -> Connection:
        wire = self.wires[uid] = RecordingWire()
        conn = Connection({"id": uid}, wire, _closed, 1 << 20)
        assert await self.hub.sign_in(conn, {"sub": uid})
        await self.hub.attach(conn)
        await settle()
        return conn

    def publish(self, owner: str, event: dict[str, Any], lifecycle: bool = True) -> None:
        """As `Bus.lifecycle` (stories channel and inbox) or `Bus.personal` (inbox)."""
        data = events.encode(event)
        if lifecycle:
            self.hub.on_message(self.keys.stories_channel(owner), data)
        self.hub.on_message(self.keys.inbox_channel(owner), data)

    def got(self) -> dict[str, list[dict[str, Any]]]:
        return {uid: wire.take() for uid, wire in self.wires.items()}


async def settle() -> None:
    for _ in range(5):  # the dispatcher's flush is call_soon'd
        await asyncio.sleep(0)


def frame(type_: str, **payload: Any) -> dict[str, Any]:
    return {"type": type_, "ts": rfc3339(NOW), **payload}


def entry(
    owner: str, unseen: bool, count: int, latest_ms: int, first: int | None
) -> dict[str, Any]:
    return {"owner": user(owner), "has_unseen": unseen, "item_count": count,
            "latest_at": rfc3339(latest_ms),
            "first_unseen_id": item_id(owner, first) if first else None}  # fmt: skip


def story_item(owner: str, seq: int) -> dict[str, Any]:
    return {"id": item_id(owner, seq), "owner": user(owner), "seen": False, "view_count": None}


@pytest.fixture
def world() -> Iterator[World]:
    """Alice posts; Bob follows her and is a close friend (seen up to 1), Carol follows her,
    Dave does not; Alice and Bob follow Erin."""
    w = World()
    w.src.follows = {BOB: {ALICE, ERIN}, CAROL: {ALICE}, ALICE: {ERIN}}
    w.src.close_friend_of = {BOB: {ALICE}}
    w.src.seen = {BOB: {ALICE: 1}}
    w.post(ALICE, 1, "public", NOW - 1000)
    w.post(ALICE, 2, "close_friends", NOW - 500)
    yield w


async def connect_all(w: World) -> None:
    for uid in (ALICE, BOB, CAROL, DAVE):
        await w.connect(uid)


async def test_snapshot_on_sign_in(world: World) -> None:
    await connect_all(world)
    assert world.got() == {
        ALICE: [frame("tray.snapshot", items=[entry(ALICE, False, 2, NOW - 500, None)])],
        BOB: [frame("tray.snapshot", items=[entry(ALICE, True, 2, NOW - 500, 2)])],
        CAROL: [frame("tray.snapshot", items=[entry(ALICE, True, 1, NOW - 1000, 1)])],
        DAVE: [frame("tray.snapshot", items=[])],
    }
    channels = [world.keys.inbox_channel(u) for u in (ALICE, BOB, CAROL, DAVE)]
    channels += [world.keys.stories_channel(o) for o in (ALICE, ERIN)]  # one subscription each
    assert world.broker.refs == dict.fromkeys(channels, 1)


async def test_story_new_reaches_followers_allowed_to_see_it(world: World) -> None:
    await connect_all(world)
    world.got()
    item = story_item(ALICE, 3)
    world.publish(ALICE, events.story_new(ALICE, 3, "public", NOW, NOW + HOUR, item))
    await settle()
    own = {**item, "seen": True, "view_count": 0}
    assert world.got() == {
        ALICE: [frame("story.new", item=own), frame("tray.update", entry=entry(ALICE, False, 3, NOW, None))],
        BOB: [frame("story.new", item=item), frame("tray.update", entry=entry(ALICE, True, 3, NOW, 2))],
        CAROL: [frame("story.new", item=item), frame("tray.update", entry=entry(ALICE, True, 2, NOW, 1))],
        DAVE: [],
    }  # fmt: skip
    world.clock.advance(10)
    close = story_item(ALICE, 4)
    world.publish(ALICE, events.story_new(ALICE, 4, "close_friends", NOW + 10, NOW + HOUR, close))
    await settle()
    got = world.got()
    assert [f["type"] for f in got[ALICE]] == ["story.new", "tray.update"]
    assert got[BOB] == [
        {**frame("story.new", item=close), "ts": rfc3339(NOW + 10)},
        {**frame("tray.update", entry=entry(ALICE, True, 4, NOW + 10, 2)), "ts": rfc3339(NOW + 10)},
    ]
    assert got[CAROL] == [] and got[DAVE] == []  # close friends only


async def test_story_removed(world: World) -> None:
    await connect_all(world)
    world.got()
    world.publish(ALICE, events.story_removed(ALICE, 1, "public", "deleted"))
    await settle()
    removed = frame("story.removed", item_id=item_id(ALICE, 1), owner_id=ALICE, reason="deleted")
    assert world.got() == {
        ALICE: [removed, frame("tray.update", entry=entry(ALICE, False, 1, NOW - 500, None))],
        BOB: [removed, frame("tray.update", entry=entry(ALICE, True, 1, NOW - 500, 2))],
        CAROL: [removed, frame("tray.remove", owner_id=ALICE)],  # nothing left she may see
        DAVE: [],
    }


async def test_audience_narrowed(world: World) -> None:
    await connect_all(world)
    world.got()
    world.publish(ALICE, events.story_audience(ALICE, 1, "public", "close_friends"))
    await settle()
    assert world.got() == {
        ALICE: [frame("tray.update", entry=entry(ALICE, False, 2, NOW - 500, None))],
        BOB: [frame("tray.update", entry=entry(ALICE, True, 2, NOW - 500, 2))],
        CAROL: [frame("tray.remove", owner_id=ALICE)],
        DAVE: [],
    }


async def test_a_share_whose_source_narrows(world: World) -> None:
    source = Source(item_id(ERIN, 1), ERIN, "public", "active", NOW + HOUR)
    world.src.sources_by_id[source.id] = source
    world.post(ERIN, 1, "public", NOW - 3000)
    world.post(ALICE, 3, "public", NOW - 200, source)  # Alice shares Erin's item
    await connect_all(world)
    assert world.got()[CAROL] == [
        frame("tray.snapshot", items=[entry(ALICE, True, 2, NOW - 200, 1)])  # the share counts
    ]
    assert f"sources ['{source.id}']" in world.src.reads
    narrowed = {**source.as_json(), "audience": "followers"}
    world.publish(ALICE, events.story_source_audience(ALICE, 3, narrowed, "public"))
    await settle()
    assert world.got() == {
        ALICE: [],  # follows Erin: keeps it
        BOB: [],  # follows Erin: keeps it
        CAROL: [  # does not follow Erin: the share is gone for her
            frame("story.removed", item_id=item_id(ALICE, 3), owner_id=ALICE, reason="deleted"),
            frame("tray.update", entry=entry(ALICE, True, 1, NOW - 1000, 1)),
        ],
        DAVE: [],
    }


def _sample_args(fn: Any) -> list[Any]:
    """Arguments of the right shape for an `events.py` constructor, from its annotations."""
    samples = {"str": "u_1", "int": 1, "bool": True, "Json": {}, "Json | None": None}
    return [samples[p.annotation] for p in inspect.signature(fn).parameters.values()]


def test_every_event_type_built_has_a_handler() -> None:
    hub = World().hub
    built = set()
    for name, fn in inspect.getmembers(events, inspect.isfunction):
        if fn.__module__ == events.__name__ and name != "encode":
            built.add(fn(*_sample_args(fn))["type"])
    assert built == events.TYPES
    assert set(hub.handlers) == events.TYPES
    forwarded = {t for t, h in hub.handlers.items() if h == hub.events.forward}
    assert forwarded == FORWARDED  # the rest change hub or connection state first


async def test_an_unknown_type_is_logged_once_and_dropped(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.connect(ALICE)
    world.got()
    channel = world.keys.inbox_channel(ALICE)
    with caplog.at_level(logging.WARNING, logger="stories.hub"):
        world.hub.on_message(channel, orjson.dumps({"type": "story.neww", "owner_id": BOB}))
        world.hub.on_message(channel, orjson.dumps({"type": "story.neww", "owner_id": CAROL}))
        world.hub.on_message(channel, orjson.dumps({"type": ["x"]}))
    warned = [r.getMessage() for r in caplog.records if r.name == "stories.hub"]
    assert warned == [
        f"dropping event of unknown type 'story.neww' on {channel}",
        f"dropping event of unknown type \"['x']\" on {channel}",
    ]
    reply = events.story_reply(item_id(ALICE, 1), user(BOB), "hi")
    world.publish(ALICE, reply, lifecycle=False)
    await settle()
    payload = {k: v for k, v in reply.items() if k != "type"}
    assert world.got()[ALICE] == [frame("story.reply", **payload)]  # known types still go out
