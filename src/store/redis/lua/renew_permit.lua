-- KEYS: 1 holders, 2 slots.
-- ARGV: 1 slot index, 2 version, 3 new version, 4 lease ms, 5 '1' if ARGV[6] is new data.
--
-- Invariant: only the current holder renews (compare-and-set on the slot's version; the new
-- version matches too, so retrying a renewal whose reply was lost is idempotent). A slot
-- still marked locked is in `holders` (reap and release clear the mark when they take it
-- out), so moving its expiry cannot hand out a slot that `free` also offers.
local i = ARGV[1]
local rec = redis.call('HMGET', KEYS[2], slot_field(i, 'version'), slot_field(i, 'locked'))
if rec[2] ~= '1' or (rec[1] ~= ARGV[2] and rec[1] ~= ARGV[3]) then
  return false
end
local expires = now_ms() + tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], int(expires), i)
redis.call('HSET', KEYS[2], slot_field(i, 'version'), ARGV[3], slot_field(i, 'lease_ms'), ARGV[4],
  slot_field(i, 'expires_at_ms'), int(expires))
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], slot_field(i, 'data'), ARGV[6])
end
return slot_reply(KEYS[2], i)
