-- One socket's state at sign-in, in one call (a pipeline of six commands costs the
-- client six times the packing and parsing): its relation sets and seen map, and on
-- request its own active items and its User hash. All keys are one user's (one
-- Cluster slot: the {user} hash tag). Read-only.
-- KEYS[1] following ZSET  KEYS[2] close-friend-of SET  KEYS[3] hidden-from SET
-- KEYS[4] seen HASH  KEYS[5] own active-items ZSET  KEYS[6] user HASH
-- ARGV[1] items floor "(<now ms>", or "" to skip the items  ARGV[2] "1" to read the User
-- Returns {following, close_friend_of, hidden_from, seen (flat field, value),
--          items (flat member, expires_at ms), user (flat field, value)}; a skipped part is {}.
local items, user = {}, {}
if ARGV[1] ~= '' then
  items = redis.call('ZRANGEBYSCORE', KEYS[5], ARGV[1], '+inf', 'WITHSCORES')
end
if ARGV[2] == '1' then
  user = redis.call('HGETALL', KEYS[6])
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), redis.call('SMEMBERS', KEYS[2]),
        redis.call('SMEMBERS', KEYS[3]), redis.call('HGETALL', KEYS[4]), items, user}
