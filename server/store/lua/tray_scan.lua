-- The tray's fan-out on read, in one call: every ring of one viewer, computed in Redis.
-- The rules are those of server/tray.py (tests/test_tray_scan.py checks they agree):
-- an item counts when it has not expired and the viewer may see its audience
-- (own ring: everything; public and followers: every follower; close friends:
-- viewers on the owner's list); it is unseen when its seq is above the viewer's
-- seen-up-to seq for that owner (never on the viewer's own ring).
-- A share (a member with a fourth field, its source's id) also needs its source to
-- be live and visible to the viewer, which lives on another owner's slot: it is not
-- counted here but returned, when the sharer's rules let the viewer see it, for the
-- caller to check its source and add it to the ring (server/reads.py).
-- ARGV[1] now (ms)  ARGV[2] key prefix
-- ARGV[3..] triples: owner id, seen-up-to seq, relation ("o" own, "c" close friend, "f" follower)
-- Returns, per owner with at least one visible item or share, a flat run of:
--   triple index (0-based), item count, latest created_ms, first unseen seq (0: none),
--   {id, handle, display_name, avatar_url} of the owner,
--   {member, expires_ms, ...} of its shares that pass the owner's rules (maybe empty).
-- Keys are built here from the prefix (see server/keys.py): the read touches one
-- items ZSET and one user hash per owner, which a caller could not declare without
-- sending two key names per followed owner.
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
    out[#out + 1] = redis.call('HMGET', prefix .. 'user:{' .. owner .. '}', 'id', 'handle', 'display_name', 'avatar_url')
    out[#out + 1] = shares
  end
end
return out
