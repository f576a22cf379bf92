// codes.js — WebSocket close codes of the Stories API (docs/protocol.md says when each comes).
//
// CLOSE: every code the server sends in a close frame, with the names and numbers of
// server/core/codes.py (tests/test_close_codes.py fails when the two differ).
// LOCAL: codes the server never sends: what a browser reports when no close frame came,
// and the code this client closes a socket with when it holds it for dead.

export const CLOSE = Object.freeze({
  WS_1000_NORMAL_CLOSURE: 1000, // the client ended the session (the server echoes it)
  WS_1001_GOING_AWAY: 1001, // the client went away, e.g. a page closed (the server echoes it)
  WS_1007_INVALID_FRAME_PAYLOAD_DATA: 1007, // a text frame that is not UTF-8
  WS_1008_POLICY_VIOLATION: 1008, // malformed frame, auth once signed in, or too many ops
  WS_1009_MESSAGE_TOO_BIG: 1009, // a frame over ws_max_frame_bytes
  WS_1011_INTERNAL_ERROR: 1011, // a server bug while handling an op, or no answer to a ping
  WS_1012_SERVICE_RESTART: 1012, // restarting: wait the reason's retry_after_ms, reconnect
  WS_1013_TRY_AGAIN_LATER: 1013, // too slow a reader; or busy signing in: retry_after_ms
  WS_4001_UNAUTHORIZED: 4001, // no valid token: sign in again, never retry the token
});

export const LOCAL = Object.freeze({
  WS_1006_ABNORMAL_CLOSURE: 1006, // no close frame: network, refused handshake, server gone
  WS_4000_CLIENT_GAVE_UP: 4000, // sent by this client: no hello, or nothing heard, in time
});
