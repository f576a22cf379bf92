"""A finished capture becomes a story item: the capture → item step, outside HTTP.

`CapturePublisher.finished` is the `CaptureManager`'s `on_finished`: the recorded
MP4 goes through exactly the upload path (the media pool's content checks and
normalisation, `StoryWriter.create`, events) with `source: "capture"`, then
`capture.finished` is pushed to the capturing user's devices. `failed` is its
`on_failed`: `capture.failed` to the same devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from server.core import events
from server.core.errors import NotFound
from server.core.items import Json
from server.media.pipeline import MediaLimits
from server.media.pool import MediaPool
from server.store.scratch import workdir
from server.store.store import Store
from server.stories.writer import StoryWriter

if TYPE_CHECKING:
    from server.live.captures import Capture
    from server.live.recorder import RecordingResult


class CapturePublisher:
    """Posts finished captures as items and tells the capturing user how it went."""

    def __init__(self, store: Store, media: MediaPool, writer: StoryWriter) -> None:
        self.store = store
        self.media = media
        self.writer = writer
        self.limits = MediaLimits.from_settings(store.settings, capture=True)

    async def finished(self, capture: Capture, result: RecordingResult) -> Json:
        """Post the recording as an item of the capturing user; returns their StoryItem.

        Takes over `result.path` and `result.poster_path`: both are gone when this
        returns or raises. Raises NotFound when the user no longer exists, and what
        `MediaPool.process` raises for a file it refuses.
        """
        user = await self.store.users.get(capture.user_id)
        try:
            if user is None:
                raise NotFound("the capturing user no longer exists")
            async with workdir(self.store.tmp_dir()) as folder:
                media = await self.media.process(Path(result.path), folder, self.limits)
                posted = await self.writer.create(
                    user, media, caption=capture.meta.get("caption"),
                    audience=capture.meta.get("audience", "followers"),
                    lifetime_h=self.store.settings.default_lifetime_h, source="capture",
                )  # fmt: skip
        finally:
            for path in (result.path, result.poster_path):
                if path:
                    Path(path).unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink, local disk)
        await self.store.bus.tell(user["id"], events.capture_finished(capture.id, posted.item))
        return posted.item

    async def failed(self, capture: Capture, detail: str) -> None:
        """Push `capture.failed` with `detail` (a sentence) to the capturing user."""
        await self.store.bus.tell(capture.user_id, events.capture_failed(capture.id, detail))
