-- KEYS: 1 semaphore record, 2 holders, 3 free, 4 slots.
-- ARGV: 1 slot index, 2 version, 3 '1' if ARGV[4] is new data, 5 the new version of a renewal
--       in doubt (or ARGV[2]), 6 the release channel, 7 the release notice.
--
-- Invariant: only the current holder releases (compare-and-set on the version, or on the new
-- version of a renewal whose outcome the holder does not know). The slot
-- goes back to `free` only if its index is still below max_size; a slot retired by a shrink
-- is dropped instead, which is how a shrink completes. The fencing counter is not touched.
local i = ARGV[1]
local rec = redis.call('HMGET', KEYS[4], slot_field(i, 'version'), slot_field(i, 'locked'))
if rec[2] ~= '1' or (rec[1] ~= ARGV[2] and rec[1] ~= ARGV[5]) then
  return 0
end
redis.call('ZREM', KEYS[2], i)
local max_size = tonumber(redis.call('HGET', KEYS[1], 'max_size') or '0')
if tonumber(i) < max_size then
  redis.call('HSET', KEYS[4], slot_field(i, 'locked'), '0', slot_field(i, 'expires_at_ms'), int(now_ms()))
  if ARGV[3] == '1' then
    redis.call('HSET', KEYS[4], slot_field(i, 'data'), ARGV[4])
  end
  redis.call('ZADD', KEYS[3], i, i)
else
  drop_slot(KEYS[4], i)
end
-- A hint for waiters (other processes' subscribers); nobody is granted anything by it.
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
