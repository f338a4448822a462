-- KEYS: 1 record, 2 holders. Reads only; false when there is no such semaphore.
-- busy_count counts the holders whose lease ends after now on the server's clock.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
return semaphore_reply(KEYS[1], KEYS[2], now_ms())
