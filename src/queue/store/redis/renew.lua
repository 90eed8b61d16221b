-- KEYS: job, active
-- ARGV: id, token, generation, lease_ms, progress value ('' : a renewal only), message
-- Returns 0 (the lease is lost: expired and recovered, or replaced), 1 (current), or
-- 2 (current, and the job was asked to stop). With a progress value, records it.
local job = redis.call('HMGET', KEYS[1], 'st', 'tok', 'gen', 'cx')
if job[1] ~= 'r' or job[2] ~= ARGV[2] or job[3] ~= ARGV[3] then
  return 0
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'pv', ARGV[5])
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'pm', ARGV[6])
  else
    redis.call('HDEL', KEYS[1], 'pm')
  end
else
  local lease_until = now_ms() + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'lu', lease_until)
  redis.call('ZADD', KEYS[2], lease_until, ARGV[1])
end
if job[4] == '1' then
  return 2
end
return 1
