-- KEYS: active, wait, signal, expiry, done:cancelled, done:failed
-- ARGV: job key prefix, max attempts (0: no limit), result ttl_ms
-- Requeues (at the front) running jobs whose lease expired: their worker died or was cut
-- off. Each gets a new generation, so the old worker's token no longer settles it. A job
-- whose cancellation was requested ends cancelled instead, and one that has had its max
-- attempts fails (a job that kills its worker each time must not run forever).
-- Returns {requeued, failed}.
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 100)
local requeued, failed = 0, 0
local max_attempts = tonumber(ARGV[2])
for _, id in ipairs(expired) do
  local key = ARGV[1] .. id
  redis.call('ZREM', KEYS[1], id)
  local job = redis.call('HMGET', key, 'st', 'lu', 'cx', 'cttl', 'att')
  if job[1] == 'r' and tonumber(job[2]) <= now then
    redis.call('HINCRBY', key, 'gen', 1)
    redis.call('HDEL', key, 'tok', 'lu')
    if job[3] == '1' then
      redis.call('HDEL', key, 'pl')
      finish(key, id, 'x', now, tonumber(job[4]), KEYS[5], KEYS[4])
    elseif max_attempts > 0 and tonumber(job[5]) >= max_attempts then
      redis.call('HSET', key, 'err', 'its worker stopped renewing the lease (died or was cut off) ' ..
        'during each of its ' .. job[5] .. ' attempts')
      finish(key, id, 'f', now, tonumber(ARGV[3]), KEYS[6], KEYS[4])
      failed = failed + 1
    else
      redis.call('HSET', key, 'st', 'q')
      redis.call('LPUSH', KEYS[2], id)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then
  signal(KEYS[3])
end
return {requeued, failed}
