-- KEYS: job, wait, delayed, expiry, done:cancelled
-- ARGV: id, ttl_ms, the cancellation channel
-- Returns 'cancelled' (was queued), 'stopping' (running: asked to stop), 'none' (no such
-- job), or 'finished:' and the finished status letter.
local key, id = KEYS[1], ARGV[1]
local status = redis.call('HGET', key, 'st')
if not status then
  return 'none'
end
if status == 'q' then
  redis.call('LREM', KEYS[2], 0, id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', key, 'pl', 'due')
  finish(key, id, 'x', now_ms(), tonumber(ARGV[2]), KEYS[5], KEYS[4])
  return 'cancelled'
end
if status == 'r' then
  -- Seen by the worker at its next renewal; kept with the TTL for a recovery to use.
  redis.call('HSET', key, 'cx', '1', 'cttl', ARGV[2])
  -- The fast path to the worker; the record above is the one that cannot be lost.
  redis.call('PUBLISH', ARGV[3], id)
  return 'stopping'
end
return 'finished:' .. status
