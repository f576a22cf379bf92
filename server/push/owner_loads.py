"""Filling the hub's owner caches: each owner read once, in batches shared by every waiter.

An owner's cache (`owner_cache.py`) is filled the first time a socket needs
it: its User, active items and the sources of its shares. Owners not loaded
yet are read together (`HubSource.owners`, one round trip), whoever waits for
them, so sockets signing in together share one read. Events that arrive
during a read are applied to the cache first and win. An owner with nothing
active keeps no cache at all, only its mark of being loaded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from server.core.tray import ActiveItem
from server.push.owner_cache import OwnerCache
from server.push.source import HubSource
from server.stories.shares import Source


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a load's failure as seen (its waiters report it), so asyncio does not log it."""
    if not future.cancelled():
        future.exception()


class OwnerLoads:
    """Loads of the caches in `owners` (owner id → `OwnerCache`, the hub's) from `source`."""

    def __init__(self, source: HubSource, owners: dict[str, OwnerCache]) -> None:
        self.source = source
        self.owners = owners
        # owner → the pending fill of its cache, or None once it is loaded (no object per owner)
        self._loads: dict[str, asyncio.Future[None] | None] = {}
        self._fills: set[asyncio.Task[None]] = set()

    def known(self, owner: str) -> bool:
        """Whether `owner`'s cache is loaded or being loaded."""
        return owner in self._loads

    def drop(self, owner: str) -> None:
        """Forget `owner`'s cache (nobody here needs it); it is read again when needed."""
        self.owners.pop(owner, None)
        self._loads.pop(owner, None)

    def clear(self) -> None:
        """Forget every cache (after a pub/sub gap: they are reloaded as they are needed)."""
        self.owners.clear()
        self._loads.clear()

    def unloaded(self, owners: list[str], own: dict[str, Any] | None = None) -> list[Any]:
        """Loads still to wait for before `owners`' caches are complete; starts missing ones.

        Owners never loaded (or whose load failed) are read in one batch,
        whoever else waits for them. `own` is a User already read (not read
        again). Awaiting a returned future raises the load's error.
        """
        missing = [o for o in owners if o not in self._loads]
        if missing:
            self._start(missing, own)
        return [f for o in owners if (f := self._loads[o]) is not None and not f.done()]

    async def fill_own(self, owner: str, user: dict[str, Any], items: list[ActiveItem]) -> None:
        """Fill `owner`'s cache from a read made elsewhere (the sign-in's), unless loaded meanwhile."""
        sources = await self.sources_of([items])
        if owner not in self._loads:
            self._filled(owner, user, items, sources)

    async def sources_of(self, reads: list[list[ActiveItem]]) -> dict[str, Source]:
        """The sources of the shares among active-item reads `reads`, in one round trip."""
        wanted = {i.source for items in reads for i in items if i.source}
        return await self.source.sources(wanted) if wanted else {}

    def _start(self, owners: list[str], own: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        futures = {o: loop.create_future() for o in owners}
        for owner, future in futures.items():
            future.add_done_callback(_retrieve)
            self._loads[owner] = future
            self.owners.setdefault(owner, OwnerCache(user={"id": owner}))
        task = loop.create_task(self._fill(futures, own))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(
        self, futures: dict[str, asyncio.Future[None]], own: dict[str, Any] | None
    ) -> None:
        """One read of each owner's User (unless `own` is that User) and active items."""
        try:
            reads = await self.source.owners(list(futures), own)
            sources = await self.sources_of([read.items for read in reads.values()])
        except Exception as exc:
            for owner, future in futures.items():
                if self._loads.get(owner) is future:
                    del self._loads[owner]
                future.set_exception(exc)
            return
        for owner, future in futures.items():
            if self._loads.get(owner) is future:  # not dropped meanwhile
                self._filled(owner, reads[owner].user, reads[owner].items, sources)
            future.set_result(None)

    def _filled(
        self,
        owner: str,
        user: dict[str, Any] | None,
        items: list[ActiveItem],
        sources: dict[str, Source],
    ) -> None:
        """Merge a read of `owner`'s User and active items into its cache; mark it loaded.

        Events that arrived during the read were applied first and win
        (`setdefault`; removed seqs stay removed). An owner with nothing active
        keeps no cache at all (most users have no story at a given moment; a
        `story.new` makes one), only its mark in `_loads`.
        """
        self._loads[owner] = None
        cache = self.owners.get(owner)
        if cache is None:
            if not items:
                return
            cache = self.owners[owner] = OwnerCache(user={"id": owner})
        if user:
            cache.user = user
        for item in items:
            if item.seq not in cache.removed:
                cache.items.setdefault(item.seq, item)
            source = sources.get(item.source) if item.source else None
            if source is not None and not (cache.sources and source.id in cache.sources):
                cache.remember(source)  # a source event that came first wins
        if not cache.items and not cache.removed:
            del self.owners[owner]
