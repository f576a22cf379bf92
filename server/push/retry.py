"""The close reason that tells a client when to come back: `{"retry_after_ms": n}`.

Both a refused sign-in (1013, `admission.py`) and a drain (1012, `drain.py`)
close with it. `n` is spread uniformly over `ws_reconnect_base_ms +
[0, ws_reconnect_spread_ms)`, so the clients told at once do not return as
one wave.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

from server.core.settings import Settings

MAX_DETAIL = 60  # characters of `detail` kept: the whole reason stays within 123 bytes


def retry_reason(
    settings: Settings, detail: str | None = None, *, rand: Callable[[int], int] = random.randrange
) -> str:
    """`{"retry_after_ms": base + uniform jitter}`, plus `"detail"` (cut to 60 characters)
    when given. `rand(n)` draws the jitter in `[0, n)`. At most 123 bytes (a close
    frame's reason, RFC 6455 5.5) for an ASCII detail."""
    wait = settings.ws_reconnect_base_ms + rand(max(1, settings.ws_reconnect_spread_ms))
    body: dict[str, int | str] = {"retry_after_ms": wait}
    if detail is not None:
        body["detail"] = detail[:MAX_DETAIL]
    return orjson.dumps(body).decode()
