-- Post one story item atomically: record, index, publish.
-- KEYS[1] item hash   KEYS[2] owner's active-items ZSET
-- ARGV[1] index member  ARGV[2] expires_at ms  ARGV[3] hash PEXPIREAT ms
-- ARGV[4] stories channel  ARGV[5] event payload  ARGV[6] owner's inbox channel
-- ARGV[7] 'PUBLISH' (one Redis) or 'SPUBLISH' (a cluster: both channels are on the owner's slot)
-- ARGV[8..] field, value pairs
-- The event goes to the followers' channel and to the owner's inbox (their other devices).
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call(ARGV[7], ARGV[4], ARGV[5])
redis.call(ARGV[7], ARGV[6], ARGV[5])
return 1
