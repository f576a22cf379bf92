"""FrameLane: a bounded queue drained by its own thread (no sockets, no media).

The lane's thread is held deterministically: a job that waits on a threading.Event.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.live.lanes import FrameLane


async def test_items_go_through_the_sink_in_order_on_the_lanes_thread() -> None:
    seen: list[tuple[int, str]] = []
    lane = FrameLane("lane-test", lambda i: seen.append((i, threading.current_thread().name)), 4)
    for i in range(3):
        lane.put(i)
    await lane.drain()
    assert [i for i, _ in seen] == [0, 1, 2] and lane.done == 3 and lane.dropped == 0
    assert {name.startswith("lane-test") for _, name in seen} == {True}
    assert threading.current_thread().name not in {name for _, name in seen}
    lane.close()


async def test_a_lane_that_falls_behind_drops_its_oldest_items_and_counts_them() -> None:
    seen: list[int] = []
    lane = FrameLane("lane-test", seen.append, 5)
    release = threading.Event()
    held = asyncio.ensure_future(lane.run(release.wait))  # the thread is busy elsewhere
    await asyncio.sleep(0)
    for i in range(12):
        lane.put(i)
    assert lane.backlog == 5 and lane.dropped == 7
    release.set()
    await held
    await lane.drain()
    assert seen == [7, 8, 9, 10, 11]  # the newest max_items survive, in order
    assert lane.done == 5 and lane.backlog == 0
    lane.close()


async def test_run_comes_after_every_item_put_before_it() -> None:
    seen: list[str] = []
    lane = FrameLane("lane-test", seen.append, 10)
    for name in "abc":
        lane.put(name)
    assert await lane.run(lambda: list(seen)) == ["a", "b", "c"]
    lane.close()


async def test_a_failing_sink_stops_the_lane_and_keeps_the_error() -> None:
    seen: list[int] = []

    def sink(i: int) -> None:
        if i == 2:
            raise ValueError("encoder broke")
        seen.append(i)

    lane = FrameLane("lane-test", sink, 10)
    for i in range(5):
        lane.put(i)
    await lane.drain()
    assert seen == [0, 1] and isinstance(lane.error, ValueError)
    lane.put(9)  # ignored from now on
    await lane.drain()
    assert seen == [0, 1] and lane.dropped == 0
    lane.close()


async def test_clear_and_close() -> None:
    seen: list[int] = []
    lane = FrameLane("lane-test", seen.append, 10)
    release = threading.Event()
    held = asyncio.ensure_future(lane.run(release.wait))
    await asyncio.sleep(0)
    for i in range(4):
        lane.put(i)
    lane.clear()
    release.set()
    await held
    await lane.drain()
    assert seen == [] and lane.backlog == 0
    lane.close()
    lane.put(1)  # after close: ignored, no error
    assert lane.backlog == 0


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameLane("lane-test", print, 0)


async def test_a_job_runs_before_items_put_after_it_while_the_thread_is_busy() -> None:
    """The lane's thread is inside `sink` (one long frame) when a job and more items come:
    the job still runs right after the items before it, and what comes after waits."""
    order: list[str] = []
    in_sink, release = threading.Event(), threading.Event()

    def sink(item: str) -> None:
        if item == "slow":
            in_sink.set()
            release.wait()
        order.append(item)

    lane = FrameLane("lane-test", sink, 3)
    lane.put("slow")
    await asyncio.to_thread(in_sink.wait)
    lane.put("before")
    job = asyncio.ensure_future(lane.run(order.append, "job"))
    await asyncio.sleep(0)
    for i in range(5):  # the job holds these back: the oldest go beyond max_items
        lane.put(f"after{i}")
    assert lane.backlog == 3 and lane.dropped == 3  # "before" and after0, after1 went
    release.set()
    await job
    await lane.drain()
    assert order == ["slow", "job", "after2", "after3", "after4"]
    lane.close()


async def test_close_cancels_waiting_jobs_and_refuses_new_ones() -> None:
    release = threading.Event()
    lane: FrameLane[int] = FrameLane("lane-test", lambda i: None, 3)
    held = asyncio.ensure_future(lane.run(release.wait))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(lane.run(lambda: "never"))
    await asyncio.sleep(0)
    lane.close()
    release.set()
    await held
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(RuntimeError):
        await lane.run(lambda: None)
