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

-- Sets field `to` of hash `key` to field `from`'s value, or removes it if `from` has none.
local function copy_field(key, from, to)
  local value = redis.call('HGET', key, from)
  if value then
    redis.call('HSET', key, to, value)
  else
    redis.call('HDEL', key, to)
  end
end

-- Moves delayed jobs (retries, `enqueue_in`) that are due to the wait list, at most 100.
local function promote(wait, delayed, prefix, now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed, id)
    redis.call('HDEL', prefix .. id, 'due')
    redis.call('RPUSH', wait, id)
  end
end

-- How long until the next delayed job is due, in ms; -1 when none is.
local function next_due(delayed, now)
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if first[2] then
    return math.max(0, tonumber(first[2]) - now)
  end
  return -1
end

-- Takes the oldest queued job: running, one more attempt, a new generation and `token`, a
-- lease until now + lease_ms in the active index. Returns
-- {id, payload, attempt, enqueued_at, started_at, generation}, or nil when none is queued.
local function take_one(wait, active, prefix, token, lease_ms, now)
  while true do
    local id = redis.call('LPOP', wait)
    if not id then
      return nil
    end
    local key = prefix .. id
    -- An id whose record is gone or no longer queued is skipped (these scripts keep the
    -- list and the records in step; a hand edit might not).
    if redis.call('HGET', key, 'st') == 'q' then
      local generation = redis.call('HINCRBY', key, 'gen', 1)
      local attempt = redis.call('HINCRBY', key, 'att', 1)
      local lease_until = now + lease_ms
      -- The previous start comes back if this attempt is given back unstarted.
      copy_field(key, 'sta', 'psta')
      redis.call('HSET', key, 'st', 'r', 'tok', token, 'sta', now, 'lu', lease_until)
      redis.call('HDEL', key, 'pv', 'pm')
      redis.call('ZADD', active, lease_until, id)
      local job = redis.call('HMGET', key, 'pl', 'enq')
      return {id, job[1], attempt, job[2], now, generation}
    end
  end
end

-- Ends a leased attempt. `k` holds the queue's keys (active, wait, delayed, signal,
-- expiry, done_c, done_f, done_x). kind: complete (data: the result), fail / quarantine
-- (data: the error), retry (data: the error, after delay_ms), cancel, release (the attempt
-- never started). Returns the job's new status letter, or 'stale' when the lease is not
-- the current one (another token or generation, or not running): nothing changes then.
local function settle_one(k, key, id, token, generation, kind, data, delay_ms, ttl, now)
  local job = redis.call('HMGET', key, 'st', 'tok', 'gen', 'cx')
  if job[1] ~= 'r' or job[2] ~= token or job[3] ~= generation then
    return 'stale'
  end
  local cancelled = job[4] == '1'
  redis.call('ZREM', k.active, id)
  prune(k.expiry, now, k.done_c, k.done_f, k.done_x)
  if kind == 'release' then
    -- The attempt never started: the job is as it was before the take.
    redis.call('HINCRBY', key, 'att', -1)
    copy_field(key, 'psta', 'sta')
  end
  if cancelled or kind == 'cancel' then
    if kind == 'retry' or kind == 'fail' or kind == 'quarantine' then
      redis.call('HSET', key, 'err', data)
    end
    redis.call('HDEL', key, 'pl')
    finish(key, id, 'x', now, ttl, k.done_x, k.expiry)
    return 'x'
  end
  if kind == 'complete' then
    redis.call('HSET', key, 'res', data)
    redis.call('HDEL', key, 'pl', 'err')
    finish(key, id, 'c', now, ttl, k.done_c, k.expiry)
    return 'c'
  end
  if kind == 'fail' or kind == 'quarantine' then
    redis.call('HSET', key, 'err', data)
    if kind == 'quarantine' then
      redis.call('HSET', key, 'qr', '1')
    end
    finish(key, id, 'f', now, ttl, k.done_f, k.expiry)
    return 'f'
  end
  -- Back to the queue: a retry after its delay, a released job at the front at once.
  redis.call('HSET', key, 'st', 'q')
  redis.call('HDEL', key, 'tok', 'lu')
  if kind == 'retry' then
    redis.call('HSET', key, 'err', data)
    local due = now + delay_ms
    redis.call('HSET', key, 'due', due)
    redis.call('ZADD', k.delayed, due, id)
  else
    redis.call('LPUSH', k.wait, id)
  end
  signal(k.signal)
  return 'q'
end
