"""Events on the Redis bus: their payloads and their channels.

Producers (HTTP handlers, the sweeper, captures) publish dicts built here;
the push layer consumes them. Payloads are orjson bytes. Two channel kinds:
`ev:{owner}:stories` (story.new, story.removed, story.audience and, for a
share, story.source_audience: filtered by audience per recipient) and `ev:{user}:inbox` (personal events).
"""

from __future__ import annotations

from typing import Any

import orjson

from server.core.keys import item_id

Json = dict[str, Any]


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
        "type": "story.new",
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
        "type": "story.removed",
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
        "type": "story.source_audience",
        "owner_id": owner_id,
        "item_id": item_id(owner_id, seq),
        "seq": seq,
        "source": source,
        "old_audience": old_audience,
    }


def story_audience(owner_id: str, seq: int, old: str, new: str) -> Json:
    return {
        "type": "story.audience",
        "owner_id": owner_id,
        "item_id": item_id(owner_id, seq),
        "seq": seq,
        "old_audience": old,
        "audience": new,
    }


def story_viewed(item: str, viewer: Json, seen_at: str, view_count: int) -> Json:
    return {
        "type": "story.viewed",
        "item_id": item,
        "viewer": viewer,
        "seen_at": seen_at,
        "view_count": view_count,
    }


def seen_sync(owner_id: str, seq: int) -> Json:
    """To the viewer's own inbox: another device saw `owner_id`'s items up to `seq`."""
    return {"type": "seen.sync", "owner_id": owner_id, "seq": seq}


def story_reaction(item: str, user: Json, emoji: str) -> Json:
    return {"type": "story.reaction", "item_id": item, "user": user, "emoji": emoji}


def story_reply(item: str, user: Json, text: str) -> Json:
    return {"type": "story.reply", "item_id": item, "user": user, "text": text}


def graph_changed(kind: str, other_id: str, on: bool) -> Json:
    """To a viewer's inbox: `kind` is following | close_friend | hidden, towards `other_id`."""
    return {"type": "graph.changed", "kind": kind, "other_id": other_id, "on": on}


def capture_finished(capture_id: str, item: Json) -> Json:
    return {"type": "capture.finished", "capture_id": capture_id, "item": item}


def capture_failed(capture_id: str, detail: str) -> Json:
    return {"type": "capture.failed", "capture_id": capture_id, "detail": detail}
