-- KEYS: 1 record, 2 lock, 3 fencing counter, 4 the tenant's mutex index.
-- ARGV: 1 mutex key, 2 version, 3 lease ms, 4 '1' if ARGV[5] is new data, 6 delete_on_release.
--
-- Invariant: at most one live holder per mutex. The lease is granted only when the lock key
-- is absent (never held, released, or its PX ran out on the server's clock) and the record
-- names no lease that is still running. The lock key is written with its PX in one SET, so
-- it never exists without a TTL. The fencing counter is a key of its own that nothing
-- deletes, and `next_token` keeps it above the server's clock, so every grant's token is
-- above all earlier ones, across deletion of the record and loss of the counter.
-- A live lease held with this very version (an earlier attempt of the same acquire, whose
-- reply was lost) is re-granted in place: the lease restarts, the fencing token stays.
local now = now_ms()
local rec = redis.call('HMGET', KEYS[1], 'version', 'locked')
local regrant = rec[1] == ARGV[2] and rec[2] == '1' and mutex_is_live(KEYS[1], KEYS[2], now)
if not regrant and mutex_is_live(KEYS[1], KEYS[2], now) then
  return false
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'lease_ms', ARGV[3],
  'expires_at_ms', int(now + tonumber(ARGV[3])), 'locked', '1', 'delete_on_release', ARGV[6])
if not regrant then
  redis.call('HSET', KEYS[1], 'fencing_token', int(next_token(KEYS[3])))
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'data', ARGV[5])
end
redis.call('ZADD', KEYS[4], 0, ARGV[1])
return mutex_reply(KEYS[1])
