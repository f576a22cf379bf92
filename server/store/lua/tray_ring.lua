-- One owner's ring for one viewer, computed in Redis (the tray's fan-out on read calls it
-- once per followed owner with unexpired items, all pipelined: one round trip per node).
-- The rules are those of server/core/tray.py (tests/test_tray_scan.py checks they agree):
-- an item counts when it has not expired and the viewer may see its audience
-- (own ring: everything; public and followers: every follower; close friends:
-- viewers on the owner's list); it is unseen when its seq is above the viewer's
-- seen-up-to seq for that owner (never on the viewer's own ring).
-- A share (a member with a fourth field, its source's id) also needs its source to
-- be live and visible to the viewer, which lives on another owner's slot: it is not
-- counted here but returned, when the sharer's rules let the viewer see it, for the
-- caller to check its source and add it to the ring (server/stories/shares.py).
-- KEYS[1] owner's active-items ZSET  KEYS[2] owner's user HASH (one slot: {owner})
-- ARGV[1] now (ms)  ARGV[2] seen-up-to seq  ARGV[3] relation ("o" own, "c" close friend,
-- "f" follower)
-- Returns {} when the viewer sees no item or share of the owner, else
--   {item count, latest created_ms, first unseen seq (0: none),
--    {id, handle, display_name, avatar_url} of the owner,
--    {member, expires_ms, ...} of its shares that pass the owner's rules (maybe empty)}.
local seen, rel = tonumber(ARGV[2]), ARGV[3]
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES')
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
if count == 0 and #shares == 0 then
  return {}
end
return {count, latest, first,
        redis.call('HMGET', KEYS[2], 'id', 'handle', 'display_name', 'avatar_url'), shares}
