-- KEYS: 1 record, 2 lock, 3 the tenant's mutex index.
-- ARGV: 1 mutex key, 2 '1' if ARGV[3] is the version to match.
-- Returns 1 deleted, 0 nothing to delete, -1 a live lease holds it.
--
-- Invariant: an administrative delete never removes a live lease, unless the caller names
-- the lease's version. The fencing counter stays, so tokens keep growing after a delete.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[2] == '1' then
  if redis.call('HGET', KEYS[1], 'version') ~= ARGV[3] then
    return 0
  end
elseif mutex_is_live(KEYS[1], KEYS[2], now_ms()) then
  return -1
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
