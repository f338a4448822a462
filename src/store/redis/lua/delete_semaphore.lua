-- KEYS: 1 record, 2 holders, 3 free, 4 slots, 5 the tenant's semaphore index.
-- ARGV: 1 semaphore key.
-- Returns 1 deleted, 0 no such semaphore, -n n permits are live.
--
-- Invariant: a semaphore with a live permit is never deleted. The slots' fencing counters
-- stay, so tokens keep growing if the semaphore is created again.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local live = live_permits(KEYS[2], now_ms())
if live > 0 then
  return -live
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
