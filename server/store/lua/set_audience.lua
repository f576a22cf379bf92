-- Change an active item's audience: rewrite its index member, publish. Idempotent.
-- KEYS[1] item hash  KEYS[2] active-items ZSET
-- ARGV[1] new audience name  ARGV[2] new member  ARGV[3] stories channel  ARGV[4] event payload
-- ARGV[5] owner's inbox channel
-- ARGV[6] 'PUBLISH' (one Redis) or 'SPUBLISH' (a cluster: both channels are on the owner's slot)
-- Returns the old audience name, or false when the item is not active.
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then
  return false
end
local old = redis.call('HGET', KEYS[1], 'audience')
if old == ARGV[1] then
  return old
end
local member = redis.call('HGET', KEYS[1], 'member')
local score = redis.call('ZSCORE', KEYS[2], member)
redis.call('ZREM', KEYS[2], member)
redis.call('ZADD', KEYS[2], score, ARGV[2])
redis.call('HSET', KEYS[1], 'audience', ARGV[1], 'member', ARGV[2])
redis.call(ARGV[6], ARGV[3], ARGV[4])
redis.call(ARGV[6], ARGV[5], ARGV[4])
return old
