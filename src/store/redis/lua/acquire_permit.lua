-- KEYS: 1 semaphore record, 2 holders, 3 free, 4 slots, 5 slot fencing counters.
-- ARGV: 1 version, 2 lease ms (0: the semaphore's), 3 '1' if ARGV[4] is new data.
-- Returns -1 when there is no such semaphore, false when every permit is busy.
--
-- Invariant: at most max_size live permits. Expired holders are reclaimed first (reap), so
-- every member of `holders` is live; a permit is granted only while there are fewer than
-- max_size of them, retired slots included, so a shrink never over-admits. The slot is the
-- lowest free index (ZPOPMIN, O(log n)): the cost does not grow with max_size (reclaiming is
-- paid once per expired lease). A slot's fencing counter is never deleted, so its tokens
-- grow across release, retirement and deletion of the semaphore.
local sem = redis.call('HMGET', KEYS[1], 'max_size', 'lease_ms')
if not sem[1] then
  return -1
end
local max_size = tonumber(sem[1])
local now = now_ms()
reap(KEYS[2], KEYS[3], KEYS[4], now, max_size)
if redis.call('ZCARD', KEYS[2]) >= max_size then
  return false
end
local popped = redis.call('ZPOPMIN', KEYS[3])
if #popped == 0 then
  return false
end
local i = popped[1]
local lease = tonumber(ARGV[2])
if lease <= 0 then
  lease = tonumber(sem[2])
end
local expires = now + lease
local token = redis.call('HINCRBY', KEYS[5], i, 1)
redis.call('ZADD', KEYS[2], int(expires), i)
redis.call('HSET', KEYS[4], slot_field(i, 'version'), ARGV[1], slot_field(i, 'fencing_token'), token,
  slot_field(i, 'lease_ms'), int(lease), slot_field(i, 'expires_at_ms'), int(expires),
  slot_field(i, 'locked'), '1')
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[4], slot_field(i, 'data'), ARGV[4])
end
return slot_reply(KEYS[4], i)
