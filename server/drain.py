"""Graceful restarts: on SIGTERM drain our sockets before uvicorn shuts down.

uvicorn's own shutdown closes every WebSocket with a bare 1012 at once and
drops frames still queued. Installed by the lifespan (in the main thread of
a worker), this handler runs first: the hub refuses new sockets, flushes
queued frames and closes every socket with 1012 in batches, telling each
client how long to wait (`{"retry_after_ms"}` in the close reason, spread
with jitter); then uvicorn's handler runs as before.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stories.drain")


def install(drain: Callable[[], Any]) -> Callable[[], None]:
    """Chain `drain()` (a coroutine function) in front of the current SIGTERM/SIGINT handlers.

    Returns an uninstall function. Does nothing outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(sig: int = sig, previous: Any = previous) -> None:
            loop.remove_signal_handler(sig)
            task = loop.create_task(drain())
            task.add_done_callback(lambda _t: previous(sig, None))

        loop.add_signal_handler(sig, handler)
        installed.append(sig)

    def uninstall() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return uninstall
