-- Free a lock only if it is still ours (it may have expired and been taken by another).
-- KEYS[1] lock key  ARGV[1] our token
-- Returns 1 when freed, 0 when the lock was not ours (or gone).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
