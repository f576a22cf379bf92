"""The Lua scripts of `server/store/lua/`, loaded once per Redis client.

redis-py's `Script` objects run by EVALSHA and fall back to SCRIPT LOAD and
EVALSHA after a restart flushed the script cache (on a Cluster SCRIPT LOAD goes
to every primary), so callers just `await script(keys, args)`. Every script
declares its keys and they all carry one hash tag: one Cluster slot per call.

Inside a pipeline use `Batch`: a Cluster pipeline refuses redis-py's `evalsha`
and `publish` methods, and a script cache flushed on one node (a restart, a
failover) must not fail the whole batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).parent / "lua"


class Scripts:
    """Every script of `lua/`, bound to one client (`post_item`, `tray_scan`, ...)."""

    def __init__(self, redis: Redis) -> None:
        self.post_item = self._load(redis, "post_item")
        self.end_item = self._load(redis, "end_item")
        self.set_audience = self._load(redis, "set_audience")
        self.seen_max = self._load(redis, "seen_max")
        self.tray_scan = self._load(redis, "tray_scan")
        self.sign_in = self._load(redis, "sign_in")
        self.unlock = self._load(redis, "unlock")

    @staticmethod
    def _load(redis: Redis, name: str) -> AsyncScript:
        return redis.register_script((LUA_DIR / f"{name}.lua").read_text())


class Batch:
    """A non-transactional pipeline (one round trip per node) that may hold script calls.

    `pipe` is the underlying pipeline, for any other command. A script queued with
    `script()` runs by EVALSHA; where a node answers NOSCRIPT, that call alone is
    repeated after the batch through its `Script` (which loads it first), so it
    may run after commands queued behind it. `execute_command()` queues any
    other command (the Bus queues its PUBLISHes so). `execute()` returns the
    replies in order and raises the first error.
    """

    def __init__(self, redis: Redis) -> None:
        self.pipe = redis.pipeline(transaction=False)
        self._scripts: dict[int, tuple[AsyncScript, list[Any], list[Any]]] = {}

    def __len__(self) -> int:
        return len(self.pipe)

    def script(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> None:
        """Queue one call of `script`."""
        self._scripts[len(self.pipe)] = (script, keys, args)
        self.pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)

    def execute_command(self, *args: Any) -> None:
        """Queue one command, e.g. `("PUBLISH", channel, payload)`."""
        self.pipe.execute_command(*args)

    async def execute(self) -> list[Any]:
        """Run the batch; raises the first error (after retrying NOSCRIPT calls)."""
        calls, self._scripts = self._scripts, {}
        replies = list(await self.pipe.execute(raise_on_error=False))
        for position, (script, keys, args) in calls.items():
            if isinstance(replies[position], NoScriptError):
                replies[position] = await script(keys, args)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
