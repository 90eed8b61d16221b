-- KEYS: wait, delayed, active
-- ARGV: job key prefix, token, lease_ms
-- Moves due delayed jobs (retries, `enqueue_in`) to the wait list, then takes the oldest
-- queued job: running, one more attempt, a new generation and token, a lease until
-- now + lease_ms in the active index.
-- Returns {1, id, payload, attempt, enqueued_at, started_at, generation}, or
-- {0, ms until the next delayed job is due (-1: none)}.
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', ARGV[1] .. id, 'due')
  redis.call('RPUSH', KEYS[1], id)
end
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then
    local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if next_due[2] then
      return {0, math.max(0, tonumber(next_due[2]) - now)}
    end
    return {0, -1}
  end
  local key = ARGV[1] .. id
  -- An id whose record is gone or no longer queued is skipped (it cannot happen through
  -- these scripts, which keep the list and the records in step; a hand edit might).
  if redis.call('HGET', key, 'st') == 'q' then
    local generation = redis.call('HINCRBY', key, 'gen', 1)
    local attempt = redis.call('HINCRBY', key, 'att', 1)
    local lease_until = now + tonumber(ARGV[3])
    -- The previous start comes back if this attempt is given back unstarted.
    local previous = redis.call('HGET', key, 'sta')
    if previous then
      redis.call('HSET', key, 'psta', previous)
    else
      redis.call('HDEL', key, 'psta')
    end
    redis.call('HSET', key, 'st', 'r', 'tok', ARGV[2], 'sta', now, 'lu', lease_until)
    redis.call('HDEL', key, 'pv', 'pm')
    redis.call('ZADD', KEYS[3], lease_until, id)
    local job = redis.call('HMGET', key, 'pl', 'enq')
    return {1, id, job[1], attempt, job[2], now, generation}
  end
end
