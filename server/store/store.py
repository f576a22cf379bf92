"""The dependencies every story operation shares, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from server.core.clock import Clock
from server.core.keys import Keys
from server.core.settings import Settings
from server.core.signing import MediaSigner
from server.store.bus import Bus
from server.store.graph import Graph
from server.store.scripts import Scripts
from server.store.storage import Storage
from server.store.users import UserStore


@dataclass
class Store:
    """Redis client, key names, scripts, users, graph, media signer and storage, clock.

    `bus` (built from `redis` and `keys`) is the one publisher of events.
    """

    redis: Redis
    keys: Keys
    scripts: Scripts
    users: UserStore
    graph: Graph
    signer: MediaSigner
    storage: Storage
    clock: Clock
    settings: Settings
    bus: Bus = field(init=False)

    def __post_init__(self) -> None:
        self.bus = Bus(self.redis, self.keys)

    def tmp_dir(self) -> Path:
        """The root of upload scratch folders: `<data_dir>/tmp`, beside local media."""
        path = self.settings.data_path.resolve() / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lifetime_ms(self, lifetime_h: int) -> int:
        """Item lifetime; `settings.lifetime_seconds` overrides every lifetime when set."""
        if self.settings.lifetime_seconds:
            return self.settings.lifetime_seconds * 1000
        return lifetime_h * 3600 * 1000
