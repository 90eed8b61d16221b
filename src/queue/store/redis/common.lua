-- Shared by every script (prepended at build time). Times are the Redis server's clock,
-- in Unix milliseconds, so that leases do not depend on the workers' clocks.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Ends a job in a finished status: timestamps it, drops the lease and cancel flag, indexes
-- it for `list` and `clear`, and lets Redis expire its record after `ttl_ms`.
-- `done` is the key of the finished-status index, `expiry` the index of expiry times.
local function finish(key, id, status, now, ttl_ms, done, expiry)
  redis.call('HSET', key, 'st', status, 'fin', now)
  redis.call('HDEL', key, 'tok', 'lu', 'cx', 'cttl')
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('ZADD', done, tonumber(redis.call('HGET', key, 'seq')), id)
  redis.call('ZADD', expiry, now + ttl_ms, id)
end

-- Drops index entries of records that expired (at most 100 per call, so each script stays
-- short; every settlement and listing calls it, so the indexes shrink as fast as they grow).
local function prune(expiry, now, done_c, done_f, done_x)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(gone) do
    redis.call('ZREM', done_c, id)
    redis.call('ZREM', done_f, id)
    redis.call('ZREM', done_x, id)
    redis.call('ZREM', expiry, id)
  end
end

-- Wakes one worker blocked in BLPOP on the signal list; the list is a hint, capped.
local function signal(key)
  redis.call('RPUSH', key, '1')
  redis.call('LTRIM', key, -64, -1)
end
