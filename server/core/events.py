"""Events on the Redis bus: their payloads and their channels.

Producers (HTTP handlers, the sweeper, captures) publish dicts built here;
the push layer consumes them. Payloads are orjson bytes. Two channel kinds:
`ev:{owner}:stories` (story.new, story.removed, story.audience and, for a
share, story.source_audience: filtered by audience per recipient) and
`ev:{user}:inbox` (personal events, and the lifecycle of the user's own items).
The type strings are the constants below (`LIFECYCLE`, `PERSONAL`); the push
layer's handler table is keyed by them.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.core.keys import item_id

Json = dict[str, Any]

# Event types: the "type" field of every payload built here.
STORY_NEW = "story.new"
STORY_REMOVED = "story.removed"
STORY_AUDIENCE = "story.audience"
STORY_SOURCE_AUDIENCE = "story.source_audience"
STORY_VIEWED = "story.viewed"
SEEN_SYNC = "seen.sync"
STORY_REACTION = "story.reaction"
STORY_REPLY = "story.reply"
GRAPH_CHANGED = "graph.changed"
CAPTURE_FINISHED = "capture.finished"
CAPTURE_FAILED = "capture.failed"

LIFECYCLE: frozenset[str] = frozenset(
    {STORY_NEW, STORY_REMOVED, STORY_AUDIENCE, STORY_SOURCE_AUDIENCE}
)  # on the owner's stories channel and inbox
PERSONAL: frozenset[str] = frozenset(
    {STORY_VIEWED, SEEN_SYNC, STORY_REACTION, STORY_REPLY, GRAPH_CHANGED, CAPTURE_FINISHED,
     CAPTURE_FAILED}
)  # fmt: skip
TYPES: frozenset[str] = LIFECYCLE | PERSONAL  # every type this module builds


def encode(event: Json) -> bytes:
    return orjson.dumps(event)


def story_new(
    owner_id: str,
    seq: int,
    audience: str,
    created_ms: int,
    expires_ms: int,
    item: Json,
    source: Json | None = None,
) -> Json:
    """`item` is the StoryItem as a follower sees it (seen false, view_count null).

    `source` (`Source.as_json()`, shares only) lets the push layer apply the
    source owner's rules too.
    """
    return {
        "type": STORY_NEW,
        "owner_id": owner_id,
        "seq": seq,
        "audience": audience,
        "created_ms": created_ms,
        "expires_ms": expires_ms,
        "item": item,
        "source": source,
    }


def story_removed(
    owner_id: str, seq: int, audience: str, reason: str, source: Json | None = None
) -> Json:
    """`reason` is "expired" or "deleted"; `source` as in `story_new` (shares only)."""
    return {
        "type": STORY_REMOVED,
        "owner_id": owner_id,
        "item_id": item_id(owner_id, seq),
        "seq": seq,
        "audience": audience,
        "reason": reason,
        "source": source,
    }


def story_source_audience(owner_id: str, seq: int, source: Json, old_audience: str) -> Json:
    """On the sharer's channel: the source of share `seq` changed audience (now `source`'s).

    Internal: the push layer turns it into story.removed / tray.update for the
    viewers who lose or gain the share; clients never see it.
    """
    return {
        "type": STORY_SOURCE_AUDIENCE,
        "owner_id": owner_id,
        "item_id": item_id(owner_id, seq),
        "seq": seq,
        "source": source,
        "old_audience": old_audience,
    }


def story_audience(owner_id: str, seq: int, old: str, new: str) -> Json:
    return {
        "type": STORY_AUDIENCE,
        "owner_id": owner_id,
        "item_id": item_id(owner_id, seq),
        "seq": seq,
        "old_audience": old,
        "audience": new,
    }


def story_viewed(item: str, viewer: Json, seen_at: str, view_count: int) -> Json:
    return {
        "type": STORY_VIEWED,
        "item_id": item,
        "viewer": viewer,
        "seen_at": seen_at,
        "view_count": view_count,
    }


def seen_sync(owner_id: str, seq: int) -> Json:
    """To the viewer's own inbox: another device saw `owner_id`'s items up to `seq`."""
    return {"type": SEEN_SYNC, "owner_id": owner_id, "seq": seq}


def story_reaction(item: str, user: Json, emoji: str) -> Json:
    return {"type": STORY_REACTION, "item_id": item, "user": user, "emoji": emoji}


def story_reply(item: str, user: Json, text: str) -> Json:
    return {"type": STORY_REPLY, "item_id": item, "user": user, "text": text}


def graph_changed(kind: str, other_id: str, on: bool) -> Json:
    """To a viewer's inbox: `kind` is following | close_friend | hidden, towards `other_id`."""
    return {"type": GRAPH_CHANGED, "kind": kind, "other_id": other_id, "on": on}


def capture_finished(capture_id: str, item: Json) -> Json:
    return {"type": CAPTURE_FINISHED, "capture_id": capture_id, "item": item}


def capture_failed(capture_id: str, detail: str) -> Json:
    return {"type": CAPTURE_FAILED, "capture_id": capture_id, "detail": detail}
