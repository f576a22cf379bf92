"""One retry helper for every background loop: exponential backoff with full jitter.

`raise_if_cancelling()` belongs in the same loops: call it before each sleep.

Delay for attempt n (0-based) is uniform in [0, min(cap, base * 2**n)]
("full jitter", AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
`reset()` after a success starts again from `base`.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays in seconds: `base_s` (default 0.1), capped at `cap_s` (default 10)."""

    def __init__(
        self, base_s: float = 0.1, cap_s: float = 10.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that an await swallowed.

    On Python 3.11 `asyncio.wait_for` (which redis-py uses around socket writes)
    returns its inner result when the cancel lands just as that finished, so the
    CancelledError never reaches this loop; `Task.cancelling()` still counts it.
    Without this check, shutdown would wait on a loop that runs on.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
