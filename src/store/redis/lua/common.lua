-- Helpers shared by every script (the store prepends this text to each one).

-- The server's clock, in milliseconds since the Unix epoch. Scripts replicate their effects
-- (the default since Redis 5, the only mode since 7), so reading TIME before a write is
-- allowed and replicas apply the same values.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's clock in microseconds (about 1.8e15: exact in Lua's doubles, below 2^53).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- An integer as plain decimal text (tostring switches to exponent notation past 14 digits).
local function int(x)
  return string.format('%d', x)
end

-- The next fencing token of a counter kept in string `key` (or, with `field`, in that field of
-- hash `key`): one more than the last one, and never below the server's clock in
-- microseconds. So tokens keep growing when the counter is lost (a restart without
-- persistence, a failover to a replica that missed it, a flush), unless the clock steps back.
local function next_token(key, field)
  local token
  if field then
    token = redis.call('HINCRBY', key, field, 1)
  else
    token = redis.call('INCR', key)
  end
  local floor = now_us()
  if token < floor then
    token = floor
    if field then
      redis.call('HSET', key, field, int(token))
    else
      redis.call('SET', key, int(token))
    end
  end
  return token
end

-- The fields of one permit slot in the semaphore's `slots` hash: `<index>:<name>`.
local SLOT_FIELDS = { 'version', 'fencing_token', 'lease_ms', 'expires_at_ms', 'locked', 'data' }

local function slot_field(i, name)
  return i .. ':' .. name
end

local function drop_slot(slots, i)
  for _, name in ipairs(SLOT_FIELDS) do
    redis.call('HDEL', slots, slot_field(i, name))
  end
end

-- Reclaims the permits whose lease ran out (score <= now).
-- Invariant kept: every slot index below max_size is in exactly one of `holders` (granted,
-- scored by expiry) and `free`; a slot marked locked is in `holders`; a slot at or above
-- max_size (retired by a shrink) exists only while it is in `holders`. So a reclaimed slot
-- goes back to `free`, unlocked (a late renewal of it then fails), or, if retired, is dropped.
local function reap(holders, free, slots, now, max_size)
  local expired = redis.call('ZRANGEBYSCORE', holders, '-inf', int(now))
  for _, i in ipairs(expired) do
    redis.call('ZREM', holders, i)
    if tonumber(i) < max_size then
      redis.call('HSET', slots, slot_field(i, 'locked'), '0')
      redis.call('ZADD', free, i, i)
    else
      drop_slot(slots, i)
    end
  end
end

-- Live permits: holders whose lease ends after now.
local function live_permits(holders, now)
  return redis.call('ZCOUNT', holders, '(' .. int(now), '+inf')
end

-- Whether a mutex has a live lease: its lock key exists, or (should the lock key have been
-- evicted under memory pressure) its record still names a lease that has not ended.
local function mutex_is_live(record, lock, now)
  if redis.call('EXISTS', lock) == 1 then
    return true
  end
  local rec = redis.call('HMGET', record, 'locked', 'expires_at_ms')
  return rec[1] == '1' and tonumber(rec[2]) > now
end

-- Reply for a mutex record: {version, fencing_token, lease_ms, expires_at_ms, locked,
-- delete_on_release, data (false: none)}.
local function mutex_reply(record)
  local r = redis.call('HMGET', record, 'version', 'fencing_token', 'lease_ms', 'expires_at_ms',
    'locked', 'delete_on_release', 'data')
  return { r[1], tonumber(r[2]), tonumber(r[3]), tonumber(r[4]), tonumber(r[5]), tonumber(r[6]), r[7] }
end

-- Reply for a permit slot: as mutex_reply, then the slot index.
local function slot_reply(slots, i)
  local r = redis.call('HMGET', slots, slot_field(i, 'version'), slot_field(i, 'fencing_token'),
    slot_field(i, 'lease_ms'), slot_field(i, 'expires_at_ms'), slot_field(i, 'locked'),
    slot_field(i, 'data'))
  return { r[1], tonumber(r[2]), tonumber(r[3]), tonumber(r[4]), tonumber(r[5]), 0, r[6], tonumber(i) }
end

-- Reply for a semaphore: {version, max_size, lease_ms, busy_count}.
local function semaphore_reply(record, holders, now)
  local s = redis.call('HMGET', record, 'version', 'max_size', 'lease_ms')
  return { s[1], tonumber(s[2]), tonumber(s[3]), live_permits(holders, now) }
end

