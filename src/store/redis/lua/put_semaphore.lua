-- KEYS: 1 record, 2 holders, 3 free, 4 slots, 5 the tenant's semaphore index.
-- ARGV: 1 semaphore key, 2 version, 3 max size, 4 lease ms.
--
-- Invariant: every slot index below max_size is in exactly one of `holders` and `free`, after
-- a create or resize too. Growing offers the new indexes that nobody holds; shrinking drops
-- the free slots at or above the new size at once and leaves the held ones (retired) to be
-- dropped when they are released or expire: release and reap never return them to `free`,
-- and acquire counts them, so a shrink never over-admits. One script: all or nothing.
-- Cost: linear in the change of size, not in the size.
local now = now_ms()
local old = tonumber(redis.call('HGET', KEYS[1], 'max_size') or '0')
local new = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'max_size', ARGV[3], 'lease_ms', ARGV[4],
  'updated_at_ms', int(now))
redis.call('HSETNX', KEYS[1], 'created_at_ms', int(now))
redis.call('ZADD', KEYS[5], 0, ARGV[1])
reap(KEYS[2], KEYS[3], KEYS[4], now, new)
for i = old, new - 1 do
  if not redis.call('ZSCORE', KEYS[2], i) then
    redis.call('ZADD', KEYS[3], i, i)
  end
end
if new < old then
  for _, i in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], new, '+inf')) do
    drop_slot(KEYS[4], i)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], new, '+inf')
end
return semaphore_reply(KEYS[1], KEYS[2], now)
