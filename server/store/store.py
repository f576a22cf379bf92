"""The dependencies every story operation shares, built once by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from server.core.clock import Clock
from server.core.keys import Keys
from server.core.settings import Settings
from server.core.signing import MediaSigner
from server.store.graph import Graph
from server.store.scripts import Scripts
from server.store.storage import LocalStorage
from server.store.users import UserStore


@dataclass
class Store:
    """Redis client, key names, scripts, users, graph, media signer and storage, clock."""

    redis: Redis
    keys: Keys
    scripts: Scripts
    users: UserStore
    graph: Graph
    signer: MediaSigner
    storage: LocalStorage
    clock: Clock
    settings: Settings

    def lifetime_ms(self, lifetime_h: int) -> int:
        """Item lifetime; `settings.lifetime_seconds` overrides every lifetime when set."""
        if self.settings.lifetime_seconds:
            return self.settings.lifetime_seconds * 1000
        return lifetime_h * 3600 * 1000
