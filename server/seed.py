"""Demo data for `stories serve --demo`: six users, a follow graph, real media.

Stories are made from the real photos and videos in `tests/media/` (their
licences are in that folder's README.md), backdated so rings are ordered by age,
and alice has already seen some of them, so her tray shows both unseen
(coloured) and seen (grey) rings. Seeding runs once per Redis (a marker key).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from server.media.pipeline import MediaLimits
from server.services import Services
from server.store.scratch import workdir

log = logging.getLogger("stories.seed")
MEDIA_DIR = Path(__file__).resolve().parent.parent / "tests" / "media"
HOUR_MS = 3600 * 1000

USERS = ["alice", "bob", "carol", "dan", "erin", "frank"]
# (owner, file, caption, audience, hours ago)
STORIES = [
    ("bob", "rocket.jpg", "Launch day!", "followers", 5.0),
    ("bob", "city_vertical_h264.mp4", "City lights", "followers", 1.0),
    ("carol", "coffee.png", "Morning fuel", "public", 20.0),
    ("carol", "chelsea_exif_orientation6.jpg", "For my close friends", "close_friends", 3.0),
    ("dan", "astronaut.png", "Out of this world", "followers", 10.0),
    ("erin", "city_vp8.webm", "Night walk", "followers", 0.5),
    ("frank", "chelsea.png", "Chelsea says hi", "followers", 15.0),
]
SEEN_BY_ALICE = ["dan", "frank"]


async def seed_demo(svc: Services) -> None:
    """Create the demo users, graph and stories unless this Redis already has them."""
    store = svc.store
    if not await store.redis.set(store.keys.demo_seeded(), b"1", nx=True):
        return
    users = {h: await store.users.login(h) for h in USERS}
    now = store.clock.now_ms()
    for a in USERS:
        for b in USERS:
            if a != b:
                await store.graph.follow(users[a]["id"], users[b]["id"], now)
    await store.graph.set_close_friend(users["carol"]["id"], users["alice"]["id"], True)
    limits = MediaLimits.from_settings(store.settings)
    for owner, name, caption, audience, hours in STORIES:
        created = now if store.settings.lifetime_seconds else now - int(hours * HOUR_MS)
        async with workdir(store.tmp_dir()) as folder:
            src = folder / "src"
            shutil.copyfile(MEDIA_DIR / name, src)
            media = await svc.media.process(src, folder, limits)
            posted = await svc.writer.create(users[owner], media, caption=caption,
                                             audience=audience, lifetime_h=24, source="upload",
                                             created_ms=created)  # fmt: skip
        if owner in SEEN_BY_ALICE:
            await svc.seen.mark_seen(users["alice"], posted.record.id)
    log.info("demo data seeded: users %s", ", ".join(USERS))
