-- KEYS: 1 record, 2 lock.
-- ARGV: 1 version, 2 new version, 3 lease ms ('': the lease the record has), 4 '1' if ARGV[5]
--       is new data.
--
-- Invariant: only the current holder renews, and only a lease that has not run out.
-- Compare-and-set on the record's version: every grant writes a new one, so a match means
-- nobody has taken the mutex over. The new version matches too, so retrying a renewal whose
-- reply was lost is idempotent. A lease whose PX ran out is lost, even if nobody took it over
-- yet (as on every store). The lock key is rewritten with its PX in one SET.
local rec = redis.call('HMGET', KEYS[1], 'version', 'locked', 'lease_ms')
if rec[2] ~= '1' or (rec[1] ~= ARGV[1] and rec[1] ~= ARGV[2]) then
  return false
end
local now = now_ms()
if not mutex_is_live(KEYS[1], KEYS[2], now) then
  return false
end
local lease = ARGV[3]
if lease == '' then
  lease = rec[3]
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', lease)
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'lease_ms', lease,
  'expires_at_ms', int(now + tonumber(lease)))
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'data', ARGV[5])
end
return mutex_reply(KEYS[1])
