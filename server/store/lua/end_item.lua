-- End an active item (expired or deleted): unindex, archive, publish. Idempotent.
-- KEYS[1] item hash  KEYS[2] active-items ZSET  KEYS[3] archive ZSET
-- KEYS[4] SET of the ids of the item's shares (all keys on the owner's slot)
-- ARGV[1] reason ("expired" | "deleted")  ARGV[2] now ms  ARGV[3] hash PEXPIREAT ms
-- ARGV[4] stories channel  ARGV[5] event payload  ARGV[6] owner's inbox channel
-- ARGV[7] 'PUBLISH' (one Redis) or 'SPUBLISH' (a cluster: both channels are on the owner's slot)
-- Returns {1, share ids} when this call ended the item, 0 when it was not active.
-- The share ids are read in the same atomic step, so a share indexed after it
-- finds its source ended when it checks (server/stories.py, StoryWriter.share).
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then
  return 0
end
local member = redis.call('HGET', KEYS[1], 'member')
local seq = redis.call('HGET', KEYS[1], 'seq')
redis.call('ZREM', KEYS[2], member)
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended_ms', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], seq)
redis.call(ARGV[7], ARGV[4], ARGV[5])
redis.call(ARGV[7], ARGV[6], ARGV[5])
return {1, redis.call('SMEMBERS', KEYS[4])}
