"""Running an ASGI send coroutine in place, without a task, unless it has to wait.

`AsgiWire` (wire.py) sends through ASGI `websocket.send`, a coroutine. Giving
each send its own task would wake one task per socket per event; instead
`start_send` steps the coroutine synchronously: with uvicorn a send to a
writable socket completes without suspending (it only awaits `writable`, an
`asyncio.Event` that is set unless the kernel buffer is full). When it does
suspend — backpressure from a slow reader — the half-run coroutine is handed to
a task that resumes it once the future it waits on is done. So a slow client
costs one task, only while it is slow. (On Python ≥ 3.12,
`asyncio.eager_task_factory` is the supported way to get the same effect.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def start_send(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[None] | None:
    """Step `coro` now; None when it finished, else the task that finishes it.

    Exceptions raised by a send that completes synchronously propagate.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_resume(coro, waiting))


async def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
    """Drive a coroutine that suspended outside a task, the way a Task would."""
    try:
        while True:
            if waiting is None:  # a bare `yield` (asyncio.sleep(0))
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False
                try:
                    await asyncio.wait([waiting])
                except asyncio.CancelledError:
                    waiting.cancel()
                    raise
            try:
                waiting = coro.send(None)
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise
