"""The tray as it was before Redis Cluster support, kept only as the benchmark's baseline.

Two round trips on one Redis: (1) the viewer's seen map, close-friend-of and
hidden-from sets, and ZINTER of the following list with one global `act:owners`
key; (2) one `tray_scan` script over every active owner, building their keys from
the prefix (undeclared keys). Both are cross-slot, so neither runs on a Cluster;
`bench/tray.py` times it against `StoryReader.tray` (bucketed active owners read
by ZMSCORE, then `tray_scan.lua` with declared keys, one call on one Redis) on
the same data, calls alternating, to show what Cluster support costs on one
Redis. Shares are left out (the bench seeds none).
"""

from __future__ import annotations

from typing import Any

from server.core.items import Json
from server.core.tray import TrayState, order_tray
from server.stories.reader import StoryReader, _user

TRAY_SCAN_LUA = """
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local floor = '(' .. ARGV[1]
local out = {}
for i = 3, #ARGV, 3 do
  local owner, seen, rel = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local members = redis.call('ZRANGEBYSCORE', prefix .. 'st:{' .. owner .. '}:items', floor, '+inf',
                             'WITHSCORES')
  local count, latest, first, shares = 0, 0, 0, {}
  for j = 1, #members, 2 do
    local member = members[j]
    local seq, code, created, source = string.match(member, '^(%d+)|(%a)|(%d+)|?(.*)$')
    if rel == 'o' or code ~= 'c' or rel == 'c' then
      if source ~= '' then
        shares[#shares + 1] = member
        shares[#shares + 1] = members[j + 1]
      else
        seq, created = tonumber(seq), tonumber(created)
        count = count + 1
        if created > latest then latest = created end
        if rel ~= 'o' and seq > seen and (first == 0 or seq < first) then first = seq end
      end
    end
  end
  if count > 0 or #shares > 0 then
    out[#out + 1] = (i - 3) / 3
    out[#out + 1] = count
    out[#out + 1] = latest
    out[#out + 1] = first
    out[#out + 1] = redis.call('HMGET', prefix .. 'user:{' .. owner .. '}', 'id', 'handle',
                               'display_name', 'avatar_url')
    out[#out + 1] = shares
  end
end
return out
"""


def legacy_active_owners(prefix: str) -> str:
    """The one global active-owners key of the old layout."""
    return f"{prefix}act:owners"


class LegacyTray:
    """`tray(viewer)` as before the buckets; same entries as `StoryReader.tray` without shares."""

    def __init__(self, reader: StoryReader) -> None:
        self.reader = reader
        self.s = reader.s
        self.scan = self.s.redis.register_script(TRAY_SCAN_LUA)

    async def tray(self, viewer: str) -> list[Json]:
        k = self.s.keys
        now = self.s.clock.now_ms()
        pipe = self.s.redis.pipeline(transaction=False)
        pipe.hgetall(k.seen(viewer))
        pipe.smembers(k.close_friend_of(viewer))
        pipe.smembers(k.hidden_from(viewer))
        pipe.zinter({k.following(viewer): 0, legacy_active_owners(k.p): 1}, withscores=True)
        seen_raw, cfof_raw, hidden_raw, active_raw = await pipe.execute()
        hidden = {m.decode() for m in hidden_raw}
        cfof = {m.decode() for m in cfof_raw}
        seen = {key.decode(): int(v) for key, v in seen_raw.items()}
        active = [m.decode() for m, until in active_raw if until > now]
        owners = list(dict.fromkeys([viewer] + [o for o in active if o not in hidden]))
        args: list[Any] = [now, k.p]
        for owner in owners:
            rel = "o" if owner == viewer else ("c" if owner in cfof else "f")
            args += [owner, seen.get(owner, 0), rel]
        flat = await self.scan(keys=[], args=args)
        rings: list[TrayState] = []
        users: dict[str, Json] = {}
        for n in range(0, len(flat), 6):
            index, count, latest, first, user, _shared = flat[n : n + 6]
            owner = owners[int(index)]
            users[owner] = _user(owner, user)
            if count:
                rings.append(
                    TrayState(owner, first > 0, int(count), int(latest), int(first) or None)
                )
        return self.reader._tray_entries(order_tray(viewer, rings), users)
