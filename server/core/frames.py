"""The WebSocket wire format: client ops and server frames. Pure functions.

Client → server frames are JSON objects with an `op`: `auth` (only as the first
frame), `seen` and `ping`. Server → client frames are JSON objects with `type`
and `ts`; several queued frames may be packed into one JSON array (see
`pack`). A malformed client frame raises `ProtocolError` (`errors.py`); the
close codes are in `codes.py`.

Server frames are `Encoded`: the JSON bytes of one event (or a packed array),
made once per process and shared by every recipient (DESIGN.md, "serialize once").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from server.core.clock import rfc3339
from server.core.errors import ProtocolError

MAX_ITEM_ID_CHARS = 100


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
            raise ProtocolError(f"`seen` needs an `item` id of 1-{MAX_ITEM_ID_CHARS} characters")
        return Op("seen", item)
    if op == "auth":
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("`auth` needs a `token`")
        return Op("auth", token)
    raise ProtocolError(f"unknown op {op!r}")


class Encoded:
    """One server frame, encoded once per process and shared by its recipients.

    `frame` is the whole RFC 6455 text frame as a server sends it (unmasked, no
    extension), built with the `websockets` library's `Frame.serialize`, so a
    frame written to thousands of sockets is framed once; `data` is its payload,
    UTF-8 JSON: one event object, or an array of `events` events. `size` is the
    frame's length in bytes, which is what send queues count.
    """

    __slots__ = ("events", "frame", "head", "size")

    def __init__(self, data: bytes, events: int = 1) -> None:
        self.frame = Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
        self.size = len(self.frame)
        self.head = self.size - len(data)
        self.events = events

    @property
    def data(self) -> bytes:
        return self.frame[self.head :]

    def __repr__(self) -> str:
        return f"Encoded({self.data!r}, events={self.events})"


def encode(type_: str, now_ms: int, **payload: Any) -> Encoded:
    """One server event `{"type", "ts", **payload}`, encoded."""
    return Encoded(orjson.dumps({"type": type_, "ts": rfc3339(now_ms), **payload}))


def pack(frames: Sequence[Encoded]) -> Encoded:
    """Frames for one connection as one frame: the frame itself, or one flat JSON array.

    Frames that are arrays already (packed earlier) are spliced in, not nested.

    >>> pack([encode("pong", 0), pack([encode("pong", 0)] * 2)]).events
    3
    """
    if len(frames) == 1:
        return frames[0]
    parts = [f.data if f.events == 1 else f.data[1:-1] for f in frames]
    return Encoded(b"[" + b",".join(parts) + b"]", sum(f.events for f in frames))
