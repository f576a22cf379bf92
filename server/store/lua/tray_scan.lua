-- The rings of one viewer for a group of owners, computed in Redis (the tray's fan-out on
-- read). On one Redis the tray passes every active followed owner in one call; on a
-- Cluster one call per slot (each owner's keys carry its {owner} hash tag), all pipelined.
-- The rules are those of server/core/tray.py (tests/test_tray_scan.py checks they agree):
-- an item counts when it has not expired and the viewer may see its audience
-- (own ring: everything; public and followers: every follower; close friends:
-- viewers on the owner's list); it is unseen when its seq is above the viewer's
-- seen-up-to seq for that owner (never on the viewer's own ring).
-- A share (a member with a fourth field, its source's id) also needs its source to
-- be live and visible to the viewer, which lives on another owner's slot: it is not
-- counted here but returned, when the sharer's rules let the viewer see it, for the
-- caller to check its source and add it to the ring (server/stories/shares.py).
-- KEYS[2i-1] owner i's active-items ZSET  KEYS[2i] owner i's user HASH
-- ARGV[1] now (ms)  ARGV[2i], ARGV[2i+1] owner i's seen-up-to seq and relation
-- ("o" own, "c" close friend, "f" follower)
-- Returns, per owner with at least one visible item or share, a flat run of:
--   owner index (0-based), item count, latest created_ms, first unseen seq (0: none),
--   {id, handle, display_name, avatar_url} of the owner,
--   {member, expires_ms, ...} of its shares that pass the owner's rules (maybe empty).
local floor = '(' .. ARGV[1]
local out = {}
for i = 1, #KEYS / 2 do
  local seen, rel = tonumber(ARGV[2 * i]), ARGV[2 * i + 1]
  local members = redis.call('ZRANGEBYSCORE', KEYS[2 * i - 1], floor, '+inf', 'WITHSCORES')
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
    out[#out + 1] = i - 1
    out[#out + 1] = count
    out[#out + 1] = latest
    out[#out + 1] = first
    out[#out + 1] = redis.call('HMGET', KEYS[2 * i], 'id', 'handle', 'display_name', 'avatar_url')
    out[#out + 1] = shares
  end
end
return out
