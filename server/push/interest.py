"""Which local connections listen on which pub/sub channel: the hub's interest table.

Every socket is on its user's inbox channel and on the stories channel of each
owner in its tray, so the table holds (followed owners + 1) entries per socket
and a popular owner's channel holds every local follower. Two costs matter at
thousands of sockets, and both shape this module:

- Memory. A Python set costs 16 bytes a slot and keeps 15-60 % of its slots
  used (it grows fourfold), so a 5,000-member set takes 512 KiB, about 105
  bytes per member; a list takes 8 bytes per member (+ 12.5 % growth room).
- Leaving. A socket that closes must not scan every channel, nor search lists.
  It leaves lazily: `gone()` only counts it out of each of its own channels
  (the caller names them: O(the socket's channels)); the fan-out skips it (a
  detached connection is not `ready`), and a list is compacted once more than
  half of it is gone, which keeps the work O(1) per leave, amortised. A socket
  that stays but leaves one channel (an unfollow, a hide) is removed from that
  list at once, O(the channel's members); that is a user action, not a storm.

`join`, `leave` and `gone` return the channels that became live or empty, for
the broker's SUBSCRIBE / UNSUBSCRIBE and the hub's owner caches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Members(Generic[T]):
    """One channel's members in join order; `gone` of them have left without being removed."""

    __slots__ = ("conns", "gone")

    def __init__(self) -> None:
        self.conns: list[T] = []
        self.gone = 0

    @property
    def live(self) -> int:
        return len(self.conns) - self.gone


class Interest(Generic[T]):
    """channel → `Members`. `attached(conn)` tells whether a member is still there."""

    def __init__(self, attached: Callable[[T], bool]) -> None:
        self._channels: dict[str, Members[T]] = {}
        self._attached = attached

    def __iter__(self) -> Iterator[str]:
        return iter(self._channels)

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    def get(self, channel: str) -> list[T] | None:
        """The members of `channel` (gone ones included: callers skip them), or None."""
        members = self._channels.get(channel)
        return members.conns if members is not None else None

    def live(self, channel: str) -> int:
        members = self._channels.get(channel)
        return members.live if members is not None else 0

    def join(self, conn: T, channels: Iterable[str]) -> list[str]:
        """Add `conn` to each channel (it must not be on it yet); the channels that were empty."""
        fresh = []
        for channel in channels:
            members = self._channels.get(channel)
            if members is None:
                members = self._channels[channel] = Members()
                fresh.append(channel)
            members.conns.append(conn)
        return fresh

    def leave(self, conn: T, channels: Iterable[str]) -> list[str]:
        """Remove `conn`, which stays attached, from each channel; the channels now empty."""
        empty = []
        for channel in channels:
            members = self._channels.get(channel)
            if members is None or conn not in members.conns:
                continue
            members.conns.remove(conn)
            if not members.live:
                del self._channels[channel]
                empty.append(channel)
        return empty

    def gone(self, conn: T, channels: Iterable[str]) -> list[str]:
        """`conn` was detached from the hub: count it out of each of its channels (lazily).

        `channels` must be exactly the channels `conn` is on. Returns those now empty.
        """
        empty = []
        for channel in channels:
            members = self._channels.get(channel)
            if members is None:
                continue
            members.gone += 1
            if members.live <= 0:
                del self._channels[channel]
                empty.append(channel)
            elif members.gone * 2 > len(members.conns):
                members.conns = [c for c in members.conns if self._attached(c)]
                members.gone = 0
        return empty

    def clear(self) -> None:
        self._channels.clear()
