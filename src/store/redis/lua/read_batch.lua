-- KEYS: every key the reads touch (all of one tenant: one cluster slot).
-- ARGV: the reads, each as its argument count followed by the command and its arguments.
-- Runs them in one atomic step and returns their replies in order: a pipeline (one
-- snapshot, one request) that also works on a Redis Cluster, where pipelines and MULTI do
-- not. Invariant: it only reads: any command outside the list below is refused.
local allowed = { HGETALL = true, HMGET = true, ZRANGE = true, ZCOUNT = true, TIME = true }
local replies = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local command = string.upper(ARGV[i + 1])
  if not allowed[command] then
    return redis.error_reply('read_batch: not a read: ' .. command)
  end
  replies[#replies + 1] = redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return replies
