-- KEYS: job, active, wait, delayed, signal, expiry, done:completed, done:failed,
--       done:cancelled
-- ARGV: id, token, generation, kind, data, delay_ms, ttl_ms
-- kind: complete (data: the result), fail / quarantine (data: the error), retry (data: the
-- error, after delay_ms), cancel, release (the attempt never started).
-- Returns the job's new status letter, or 'stale' when the lease is not the current one.
local key, id = KEYS[1], ARGV[1]
local job = redis.call('HMGET', key, 'st', 'tok', 'gen', 'cx')
if job[1] ~= 'r' or job[2] ~= ARGV[2] or job[3] ~= ARGV[3] then
  return 'stale'
end
local now = now_ms()
local kind, ttl = ARGV[4], tonumber(ARGV[7])
local cancelled = job[4] == '1'
redis.call('ZREM', KEYS[2], id)
prune(KEYS[6], now, KEYS[7], KEYS[8], KEYS[9])
if kind == 'release' then
  -- The attempt never started: the job is as it was before the take.
  redis.call('HINCRBY', key, 'att', -1)
  local previous = redis.call('HGET', key, 'psta')
  if previous then
    redis.call('HSET', key, 'sta', previous)
  else
    redis.call('HDEL', key, 'sta')
  end
end
if cancelled or kind == 'cancel' then
  if kind == 'retry' or kind == 'fail' or kind == 'quarantine' then
    redis.call('HSET', key, 'err', ARGV[5])
  end
  redis.call('HDEL', key, 'pl')
  finish(key, id, 'x', now, ttl, KEYS[9], KEYS[6])
  return 'x'
end
if kind == 'complete' then
  redis.call('HSET', key, 'res', ARGV[5])
  redis.call('HDEL', key, 'pl', 'err')
  finish(key, id, 'c', now, ttl, KEYS[7], KEYS[6])
  return 'c'
end
if kind == 'fail' or kind == 'quarantine' then
  redis.call('HSET', key, 'err', ARGV[5])
  if kind == 'quarantine' then
    redis.call('HSET', key, 'qr', '1')
  end
  finish(key, id, 'f', now, ttl, KEYS[8], KEYS[6])
  return 'f'
end
-- Back to the queue: a retry after its delay, a released job at the front at once.
redis.call('HSET', key, 'st', 'q')
redis.call('HDEL', key, 'tok', 'lu')
if kind == 'retry' then
  redis.call('HSET', key, 'err', ARGV[5])
  local due = now + tonumber(ARGV[6])
  redis.call('HSET', key, 'due', due)
  redis.call('ZADD', KEYS[4], due, id)
else
  redis.call('LPUSH', KEYS[3], id)
end
signal(KEYS[5])
return 'q'
