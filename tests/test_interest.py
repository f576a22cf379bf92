"""Pure tests: the hub's interest table (`server/push/interest.py`) and the sign-in gate.

The interest table's contract: `join`, `leave` and `gone` report exactly the
channels that became live or empty; `gone` touches only the channels it is
given (so a socket that closes costs O(its own channels)); members that left
lazily are compacted away once they are more than half of a list.
"""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from server.core.settings import Settings
from server.push.admission import Busy, SignInGate
from server.push.interest import Interest
from server.push.retry import retry_reason


class Member:
    """A stand-in for a Connection: the table only stores and compares them."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"M{self.n}"


def test_join_leave_gone_report_live_and_empty_channels() -> None:
    attached: set[Member] = set()
    table: Interest[Member] = Interest(attached.__contains__)
    a, b = Member(1), Member(2)
    attached |= {a, b}
    assert table.join(a, ["x", "y"]) == ["x", "y"]
    assert table.join(b, ["y", "z"]) == ["z"]
    assert table.get("y") == [a, b] and table.live("y") == 2
    assert table.leave(a, ["y", "nope"]) == []  # b still listens on y
    assert table.get("y") == [b]
    assert table.leave(a, ["x"]) == ["x"] and "x" not in table
    attached.discard(b)
    assert table.gone(b, ["y", "z"]) == ["y", "z"]
    assert len(table) == 0 and table.get("y") is None and table.live("y") == 0


def test_gone_touches_only_the_channels_it_is_given() -> None:
    """A detached member is counted out of its own channels; no other channel is read."""

    class Watched(dict[str, object]):
        reads: list[str] = []

        def get(self, key, default=None):  # type: ignore[no-untyped-def,override]
            self.reads.append(key)
            return super().get(key, default)

    attached: set[Member] = set()
    table: Interest[Member] = Interest(attached.__contains__)
    others = [Member(n) for n in range(2000)]
    attached.update(others)
    for m in others:  # 2,000 channels of other members, three members on each of ours
        table.join(m, [f"inbox{m.n}", f"stories{m.n % 3}"])
    me = Member(-1)
    attached.add(me)
    table.join(me, ["inbox-me", "stories0", "stories1"])
    table._channels = Watched(table._channels)  # type: ignore[assignment]
    attached.discard(me)
    assert table.gone(me, ["inbox-me", "stories0", "stories1"]) == ["inbox-me"]
    assert sorted(Watched.reads) == ["inbox-me", "stories0", "stories1"]
    assert table.live("stories0") == 667 and table.live("stories1") == 667


def test_lazily_gone_members_are_compacted_and_never_counted_twice() -> None:
    rng = random.Random(3)
    attached: set[Member] = set()
    table: Interest[Member] = Interest(attached.__contains__)
    members = [Member(n) for n in range(500)]
    for m in members:
        attached.add(m)
        table.join(m, ["popular"])
    rng.shuffle(members)
    for left, m in enumerate(members[:-1], start=1):
        attached.discard(m)
        assert table.gone(m, ["popular"]) == []
        assert table.live("popular") == 500 - left
        # compaction keeps the list at most twice the live members (plus the one just gone)
        assert len(table.get("popular") or []) <= 2 * table.live("popular") + 1
    assert set(table.get("popular") or []) >= {members[-1]}
    attached.discard(members[-1])
    assert table.gone(members[-1], ["popular"]) == ["popular"]
    assert "popular" not in table


async def test_sign_in_gate_admits_a_bounded_number_then_turns_away() -> None:
    gate = SignInGate(concurrency=2, queue=3)
    inside, release = 0, asyncio.Event()
    most = 0

    async def sign_in() -> str:
        nonlocal inside, most
        try:
            async with gate.admit():
                inside += 1
                most = max(most, inside)
                await release.wait()
                inside -= 1
                return "served"
        except Busy:
            return "busy"

    tasks = [asyncio.create_task(sign_in()) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert gate.waiting == 3 and inside == 2
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("served") == 5 and results.count("busy") == 5
    assert most == 2 and gate.admitted == 5 and gate.turned_away == 5
    async with gate.admit():  # free again
        pass


def test_retry_reason_is_short_json_with_a_jittered_wait() -> None:
    settings = Settings(ws_reconnect_base_ms=1000, ws_reconnect_spread_ms=5000)
    waits = set()
    for _ in range(50):
        reason = retry_reason(settings, "too many sockets signing in" * 5)
        assert len(reason.encode()) <= 123  # a close frame's reason (RFC 6455 5.5)
        body = orjson.loads(reason)
        assert 1000 <= body["retry_after_ms"] < 6000
        waits.add(body["retry_after_ms"])
    assert len(waits) > 10  # jittered, not one wave


async def test_sign_in_gate_with_no_queue_turns_away_once_full() -> None:
    gate = SignInGate(concurrency=1, queue=0)
    async with gate.admit():
        with pytest.raises(Busy):
            async with gate.admit():
                pass
    async with gate.admit():  # the slot is free again
        pass
    assert gate.turned_away == 1 and gate.admitted == 2
