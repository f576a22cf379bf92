"""WebSocket close codes: every code a client can get in a close frame from `/ws`.

Named with their number, as Starlette's `status.py` does (`WS_1013_TRY_AGAIN_LATER`);
docs/protocol.md says when each is sent and what a client should do. The demo
client mirrors this module in `client_demo/codes.js` (`CLOSE`), and
`tests/test_close_codes.py` fails when the two disagree.

Codes 1000-1015 are RFC 6455 section 7.4.1 (1012 and 1013 from the IANA
registry); 4000-4999 are for applications. Constants only: nothing of HTTP,
nothing from the package.
"""

from __future__ import annotations

from types import MappingProxyType

WS_1000_NORMAL_CLOSURE = 1000
"""The client ended the session; the server echoes its code in the closing handshake."""

WS_1001_GOING_AWAY = 1001
"""The client went away (a page closed); the server echoes its code in the closing handshake."""

WS_1007_INVALID_FRAME_PAYLOAD_DATA = 1007
"""A text frame that is not UTF-8 (sent by the WebSocket protocol layer, uvicorn's)."""

WS_1008_POLICY_VIOLATION = 1008
"""A malformed frame, an `auth` op once signed in, or more than `ws_ops_per_second` ops."""

WS_1009_MESSAGE_TOO_BIG = 1009
"""A client frame over `ws_max_frame_bytes` (or over uvicorn's `ws_max_size`)."""

WS_1011_INTERNAL_ERROR = 1011
"""A server bug while handling an op (logged), or no answer to the keep-alive ping."""

WS_1012_SERVICE_RESTART = 1012
"""The process drains for a restart: reason `{"retry_after_ms"}`; reconnect anywhere after it."""

WS_1013_TRY_AGAIN_LATER = 1013
"""Too slow a reader; or, signing in, busy or Redis down: reason `{"retry_after_ms", "detail"}`."""

WS_4001_UNAUTHORIZED = 4001
"""No valid token (query or first `auth` frame in time): sign in again, never retry the token."""

CLOSE_CODES = MappingProxyType(
    {name: value for name, value in dict(globals()).items() if name.startswith("WS_")}
)
"""Every close code above by name (`{"WS_1000_NORMAL_CLOSURE": 1000, ...}`), read-only."""
