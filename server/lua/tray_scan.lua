-- The tray's fan-out on read, in one call: every ring of one viewer, computed in Redis.
-- The rules are those of server/tray.py (tests/test_tray_scan.py checks they agree):
-- an item counts when it has not expired and the viewer may see its audience
-- (own ring: everything; public and followers: every follower; close friends:
-- viewers on the owner's list); it is unseen when its seq is above the viewer's
-- seen-up-to seq for that owner (never on the viewer's own ring).
-- ARGV[1] now (ms)  ARGV[2] key prefix
-- ARGV[3..] triples: owner id, seen-up-to seq, relation ("o" own, "c" close friend, "f" follower)
-- Returns, per owner with at least one visible item, a flat run of:
--   triple index (0-based), item count, latest created_ms, first unseen seq (0: none),
--   {id, handle, display_name, avatar_url} of the owner.
-- Keys are built here from the prefix (see server/keys.py): the read touches one
-- items ZSET and one user hash per owner, which a caller could not declare without
-- sending two key names per followed owner.
local now = tonumber(ARGV[1])
local prefix = ARGV[2]
local floor = '(' .. ARGV[1]
local out = {}
for i = 3, #ARGV, 3 do
  local owner, seen, rel = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local members = redis.call('ZRANGEBYSCORE', prefix .. 'st:{' .. owner .. '}:items', floor, '+inf')
  local count, latest, first = 0, 0, 0
  for _, member in ipairs(members) do
    local seq, code, created = string.match(member, '^(%d+)|(%a)|(%d+)$')
    if rel == 'o' or code ~= 'c' or rel == 'c' then
      seq, created = tonumber(seq), tonumber(created)
      count = count + 1
      if created > latest then latest = created end
      if rel ~= 'o' and seq > seen and (first == 0 or seq < first) then first = seq end
    end
  end
  if count > 0 then
    out[#out + 1] = (i - 3) / 3
    out[#out + 1] = count
    out[#out + 1] = latest
    out[#out + 1] = first
    out[#out + 1] = redis.call('HMGET', prefix .. 'user:{' .. owner .. '}', 'id', 'handle', 'display_name', 'avatar_url')
  end
end
return out
