"""Push: events to sockets, as they happen.

The broker (one Redis pub/sub connection per process), the hub that turns
events into per-viewer frames (tray rings, new stories, seen-by), connections
with bounded outboxes, the sign-in gate, and the drain on SIGTERM.
"""
