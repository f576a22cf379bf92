"""The dispatcher's rules, without sockets: one flush per loop iteration, packing
behind a blocked send, and giving up on a reader whose outbox overflows.

The wire here is a recording stand-in for a socket (the real wires are tested
end to end in test_push_wire.py and test_push_resilience.py); it can be told to
block, the way a socket with a full kernel buffer does.
"""

from __future__ import annotations

import asyncio

import orjson

from server.core.frames import Encoded, encode
from server.push.connection import Connection
from server.push.dispatch import Dispatcher
from server.push.wire import WireClosed


class RecordingWire:
    """Records each payload's events; while `gate` is clear, a send waits for it."""

    def __init__(self) -> None:
        self.sends: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.gone = False

    def send(self, payload: Encoded) -> asyncio.Task[None] | None:
        data = orjson.loads(payload.data)
        self.sends.append([e["n"] for e in (data if isinstance(data, list) else [data])])
        if self.gate.is_set():
            return None
        return asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> None:
        await self.gate.wait()
        if self.gone:
            raise WireClosed("socket closed")  # as UvicornWire does once the socket went


async def _closed(code: int, reason: str) -> None:
    return None


def _setup(max_bytes: int = 1 << 20) -> tuple[Dispatcher, Connection, RecordingWire, list]:
    wire, slow = RecordingWire(), []
    conn = Connection({"id": "u_1"}, wire, _closed, max_bytes)
    conns = {conn}
    return Dispatcher(conns, slow.append), conn, wire, slow


async def _iteration() -> None:
    for _ in range(3):  # the flush is call_soon'd; the done-callbacks of tasks too
        await asyncio.sleep(0)


async def test_first_frame_goes_at_once_the_rest_of_the_iteration_packed() -> None:
    d, conn, wire, _ = _setup()
    for n in range(3):
        d.enqueue(conn, encode("x", 0, n=n))
    assert wire.sends == [[0]], "an idle connection's first frame is written at once"
    await _iteration()
    assert wire.sends == [[0], [1, 2]], "the rest of the iteration goes in one flush"
    d.enqueue(conn, encode("x", 0, n=3))
    assert wire.sends == [[0], [1, 2], [3]], "a new iteration: at once again"


async def test_frames_behind_a_blocked_send_follow_it_packed_in_order() -> None:
    d, conn, wire, _ = _setup()
    wire.gate.clear()
    d.enqueue(conn, encode("x", 0, n=0))
    await _iteration()
    assert conn.sending is not None, "the blocked send has its task"
    for n in (1, 2):
        d.enqueue(conn, encode("x", 0, n=n))
    await _iteration()
    assert wire.sends == [[0]], "nothing overtakes a blocked send"
    wire.gate.set()
    await _iteration()
    assert wire.sends == [[0], [1, 2]] and conn.sending is None


async def test_an_overflowing_reader_is_given_up_once_and_counted() -> None:
    one = encode("x", 0, n=0)
    d, conn, wire, slow = _setup(max_bytes=3 * one.size)
    wire.gate.clear()
    d.enqueue(conn, one)
    await _iteration()  # the first send blocks; the next frames queue
    for n in range(1, 6):
        d.enqueue(conn, encode("x", 0, n=n))
    assert slow == [conn] and d.closed_slow == 1 and conn.closing
    assert conn.outbox.size <= 3 * one.size
    wire.gate.set()
    await _iteration()
    assert wire.sends == [[0]], "a connection given up on gets nothing more"


async def test_a_socket_that_goes_while_a_send_waits_is_given_up_quietly() -> None:
    d, conn, wire, slow = _setup()
    wire.gate.clear()
    d.enqueue(conn, encode("x", 0, n=0))
    task = conn.sending
    assert task is not None
    d.enqueue(conn, encode("x", 0, n=1))
    wire.gone = True
    wire.gate.set()
    await _iteration()
    assert task.done() and isinstance(task.exception(), WireClosed)
    assert conn.closing and conn.sending is None and slow == []
    d.enqueue(conn, encode("x", 0, n=2))
    await _iteration()
    assert wire.sends == [[0]]
