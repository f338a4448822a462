-- KEYS: 1 semaphore record, 2 holders, 3 free, 4 slots, 5 slot fencing counters.
-- ARGV: 1 version, 2 lease ms ('': the semaphore's), 3 '1' if ARGV[4] is new data,
--       5 '1' if an earlier attempt with this version may have been granted.
-- Returns -1 when there is no such semaphore, false when every permit is busy.
--
-- Invariant: at most max_size live permits. Expired holders are reclaimed first (reap), so
-- every member of `holders` is live; a permit is granted only while there are fewer than
-- max_size of them, retired slots included, so a shrink never over-admits. The slot is the
-- lowest free index (ZPOPMIN, O(log n)): the cost does not grow with max_size (reclaiming is
-- paid once per expired lease). A slot's fencing counter is never deleted, and `next_token`
-- keeps it above the server's clock, so its tokens grow across release, retirement, deletion
-- of the semaphore and loss of the counter.
-- A retry (ARGV[5]) first looks for a live slot held with its own version (an earlier attempt
-- granted it, but its reply was lost) and re-grants it in place instead of taking a second
-- one; that walks the live holders, so only retries do it.
local sem = redis.call('HMGET', KEYS[1], 'max_size', 'lease_ms')
if not sem[1] then
  return -1
end
local max_size = tonumber(sem[1])
local now = now_ms()
reap(KEYS[2], KEYS[3], KEYS[4], now, max_size)
local lease = tonumber(sem[2])
if ARGV[2] ~= '' then
  lease = tonumber(ARGV[2])
end
local expires = now + lease
local i = nil
if ARGV[5] == '1' then
  for _, held in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if redis.call('HGET', KEYS[4], slot_field(held, 'version')) == ARGV[1] then
      i = held
      break
    end
  end
end
if not i then
  if redis.call('ZCARD', KEYS[2]) >= max_size then
    return false
  end
  local popped = redis.call('ZPOPMIN', KEYS[3])
  if #popped == 0 then
    return false
  end
  i = popped[1]
  redis.call('HSET', KEYS[4], slot_field(i, 'version'), ARGV[1],
    slot_field(i, 'fencing_token'), int(next_token(KEYS[5], i)), slot_field(i, 'locked'), '1')
end
redis.call('ZADD', KEYS[2], int(expires), i)
redis.call('HSET', KEYS[4], slot_field(i, 'lease_ms'), int(lease),
  slot_field(i, 'expires_at_ms'), int(expires))
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[4], slot_field(i, 'data'), ARGV[4])
end
return slot_reply(KEYS[4], i)
