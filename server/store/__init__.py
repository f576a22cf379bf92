"""Store: everything that talks to Redis or to the media files, and nothing else.

The client, Lua scripts, users, the follow graph, rollout, rate limits and
idempotency, file storage, per-process scratch folders, the embedded Redis of
the demo, and `Bus`, the one publisher of events.
"""
