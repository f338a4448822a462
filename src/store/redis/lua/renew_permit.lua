-- KEYS: 1 holders, 2 slots.
-- ARGV: 1 slot index, 2 version, 3 new version, 4 lease ms ('': the lease the slot has),
--       5 '1' if ARGV[6] is new data.
--
-- Invariant: only the current holder renews (compare-and-set on the slot's version; the new
-- version matches too, so retrying a renewal whose reply was lost is idempotent), and only a
-- lease that has not run out: an expired holder no longer counts against max_size (acquire
-- reaps it), so bringing it back could make more than max_size permits live (after a shrink,
-- say). A slot still marked locked is in `holders` (reap and release clear the mark when they
-- take it out), so moving its expiry cannot hand out a slot that `free` also offers.
local i = ARGV[1]
local rec = redis.call('HMGET', KEYS[2], slot_field(i, 'version'), slot_field(i, 'locked'),
  slot_field(i, 'lease_ms'))
if rec[2] ~= '1' or (rec[1] ~= ARGV[2] and rec[1] ~= ARGV[3]) then
  return false
end
local now = now_ms()
local held_until = redis.call('ZSCORE', KEYS[1], i)
if not held_until or tonumber(held_until) <= now then
  return false
end
local lease = ARGV[4]
if lease == '' then
  lease = rec[3]
end
local expires = now + tonumber(lease)
redis.call('ZADD', KEYS[1], int(expires), i)
redis.call('HSET', KEYS[2], slot_field(i, 'version'), ARGV[3], slot_field(i, 'lease_ms'), lease,
  slot_field(i, 'expires_at_ms'), int(expires))
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], slot_field(i, 'data'), ARGV[6])
end
return slot_reply(KEYS[2], i)
