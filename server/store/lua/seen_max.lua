-- Raise a viewer's seen-up-to seq for one owner; never lowers it.
-- KEYS[1] seen hash  ARGV[1] owner id  ARGV[2] seq
-- Returns the previous value (0 when none).
local prev = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > prev then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return prev
