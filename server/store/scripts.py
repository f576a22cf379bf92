"""The Lua scripts of `server/store/lua/`, loaded once per Redis client.

redis-py's `Script` objects run by EVALSHA and fall back to EVAL after a
restart flushed the script cache, so callers just `await script(keys, args)`.
"""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).parent / "lua"


class Scripts:
    """`post_item`, `end_item`, `set_audience`, `seen_max`, `tray_scan`, `sign_in`, bound to one client."""

    def __init__(self, redis: Redis) -> None:
        self.post_item = self._load(redis, "post_item")
        self.end_item = self._load(redis, "end_item")
        self.set_audience = self._load(redis, "set_audience")
        self.seen_max = self._load(redis, "seen_max")
        self.tray_scan = self._load(redis, "tray_scan")
        self.sign_in = self._load(redis, "sign_in")

    @staticmethod
    def _load(redis: Redis, name: str) -> AsyncScript:
        return redis.register_script((LUA_DIR / f"{name}.lua").read_text())
