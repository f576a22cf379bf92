"""The WebSocket wire format: close codes, client ops, server frames. Pure functions.

Client → server frames are JSON objects with an `op`: `auth` (only as the first
frame), `seen` and `ping`. Server → client frames are JSON objects with `type`
and `ts`; several queued frames may be packed into one JSON array (see
`pack`). Close codes are named with their number, as Starlette's `status.py` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from server.clock import rfc3339

WS_1008_POLICY_VIOLATION = 1008
WS_1009_MESSAGE_TOO_BIG = 1009
WS_1011_INTERNAL_ERROR = 1011
WS_1012_SERVICE_RESTART = 1012
WS_1013_TRY_AGAIN_LATER = 1013
WS_4001_UNAUTHORIZED = 4001

MAX_ITEM_ID_CHARS = 100


class ProtocolError(Exception):
    """A client frame that breaks the protocol; the socket closes with 1008."""


@dataclass(frozen=True)
class Op:
    """A parsed client op: `name` is auth | seen | ping; `arg` the token or item id."""

    name: str
    arg: str | None = None


def parse_op(text: str | bytes) -> Op:
    """Parse one client frame. Raises ProtocolError for anything malformed.

    >>> parse_op('{"op": "seen", "item": "u_1.3"}')
    Op(name='seen', arg='u_1.3')
    """
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("frame is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("op"), str):
        raise ProtocolError("frame must be an object with an `op`")
    op = data["op"]
    if op == "ping":
        return Op("ping")
    if op == "seen":
        item = data.get("item")
        if not isinstance(item, str) or not 0 < len(item) <= MAX_ITEM_ID_CHARS:
            raise ProtocolError("`seen` needs an `item` id")
        return Op("seen", item)
    if op == "auth":
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("`auth` needs a `token`")
        return Op("auth", token)
    raise ProtocolError(f"unknown op {op!r}")


def encode(type_: str, now_ms: int, **payload: Any) -> str:
    """One server frame as JSON text: `{"type", "ts", **payload}`."""
    return orjson.dumps({"type": type_, "ts": rfc3339(now_ms), **payload}).decode()


def pack(frames: list[str]) -> str:
    """Frames queued for one connection as one text frame: the frame itself, or a JSON array."""
    if len(frames) == 1:
        return frames[0]
    return "[" + ",".join(frames) + "]"
