"""A story item: its stored record and its `StoryItem` JSON shape (PROTOCOL.md).

`ItemRecord` is the `st:{owner}:item:<seq>` hash, decoded. `render()` turns a
record into the API's StoryItem for one caller: `seen` is the caller's, and
`view_count` is filled for the owner only. Media URLs are signed (see
`signing.py`) and expire with the item.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from server.core.clock import rfc3339
from server.core.keys import item_id
from server.core.signing import MediaSigner
from server.core.tray import ActiveItem

Json = dict[str, Any]


@dataclass(frozen=True)
class ItemRecord:
    """One item as stored. Times in epoch ms; `status` is active | expired | deleted.

    A share (`source` "share") has no files of its own: `media_key` and
    `poster_key` are empty and its media is its source's (`server/stories/shares.py`).
    """

    owner: str
    seq: int
    source: str
    kind: str
    mime: str
    width: int
    height: int
    duration_ms: int | None
    media_key: str
    poster_key: str
    caption: str | None
    audience: str
    created_ms: int
    expires_ms: int
    status: str = "active"
    ended_ms: int | None = None
    shared_from: str | None = None  # item id of the original

    @property
    def id(self) -> str:
        return item_id(self.owner, self.seq)

    @property
    def member(self) -> str:
        return ActiveItem(
            self.seq, self.audience, self.created_ms, self.expires_ms, self.shared_from
        ).member()

    def is_live(self, now_ms: int) -> bool:
        """Active and not yet expired (reads filter on this even before the sweeper runs)."""
        return self.status == "active" and self.expires_ms > now_ms

    def to_hash(self) -> dict[str, str]:
        """Flat string fields for HSET; None values are left out."""
        out = {k: str(v) for k, v in asdict(self).items() if v is not None}
        out["member"] = self.member
        return out

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> ItemRecord | None:
        """Decode an HGETALL reply; None for an empty (missing) hash."""
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}

        def opt_int(name: str) -> int | None:
            return int(d[name]) if d.get(name) else None

        return cls(
            owner=d["owner"], seq=int(d["seq"]), source=d["source"], kind=d["kind"],
            mime=d["mime"], width=int(d["width"]), height=int(d["height"]),
            duration_ms=opt_int("duration_ms"), media_key=d["media_key"],
            poster_key=d["poster_key"], caption=d.get("caption"), audience=d["audience"],
            created_ms=int(d["created_ms"]), expires_ms=int(d["expires_ms"]),
            status=d.get("status", "active"), ended_ms=opt_int("ended_ms"),
            shared_from=d.get("shared_from"),
        )  # fmt: skip


def media_json(rec: ItemRecord, signer: MediaSigner, scope: str, exp_ms: int) -> Json:
    """The StoryItem `media` object with signed URLs valid until `exp_ms`."""
    return {
        "kind": rec.kind,
        "url": signer.url(rec.id, "file", scope, exp_ms),
        "poster_url": signer.url(rec.id, "poster", scope, exp_ms),
        "mime": rec.mime,
        "width": rec.width,
        "height": rec.height,
        "duration_ms": rec.duration_ms,
    }


def render(
    rec: ItemRecord,
    owner: Json,
    signer: MediaSigner,
    *,
    seen: bool,
    view_count: int | None,
    shared_from: Json | None = None,
    archive_until_ms: int | None = None,
) -> Json:
    """The StoryItem JSON for one caller.

    `shared_from` is `{"item_id", "owner": User}` or None. `archive_until_ms`,
    given for the owner's archive reads only, signs URLs in the archive scope.
    """
    scope, exp = ("archive", archive_until_ms) if archive_until_ms else ("live", rec.expires_ms)
    out: Json = {
        "id": rec.id,
        "owner": owner,
        "source": rec.source,
        "media": media_json(rec, signer, scope, exp),
        "caption": rec.caption,
        "audience": rec.audience,
        "created_at": rfc3339(rec.created_ms),
        "expires_at": rfc3339(rec.expires_ms),
        "shared_from": shared_from,
        "seen": seen,
        "view_count": view_count,
    }
    if rec.status != "active":
        out["status"] = rec.status
        out["ended_at"] = rfc3339(rec.ended_ms) if rec.ended_ms else None
    return out
