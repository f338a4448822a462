-- KEYS: 1 record, 2 lock, 3 the tenant's mutex index.
-- ARGV: 1 mutex key, 2 version, 3 '1' to delete the record ('0': mark it free), 4 '1' if
--       ARGV[5] is new data, 6 the new version of a renewal in doubt (or ARGV[2]), 7 the
--       release channel, 8 the release notice.
--
-- Invariant: only the current holder releases (compare-and-set on the version, or on the new
-- version of a renewal whose outcome the holder does not know). The fencing counter is not
-- touched, so the next grant's token is higher, also after a delete.
local rec = redis.call('HMGET', KEYS[1], 'version', 'locked')
if rec[2] ~= '1' or (rec[1] ~= ARGV[2] and rec[1] ~= ARGV[6]) then
  return 0
end
redis.call('DEL', KEYS[2])
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'locked', '0', 'expires_at_ms', int(now_ms()))
  if ARGV[4] == '1' then
    redis.call('HSET', KEYS[1], 'data', ARGV[5])
  end
end
-- A hint for waiters (other processes' subscribers); nobody is granted anything by it.
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
