-- KEYS: done index of the status, expiry
-- ARGV: job key prefix, status letter
-- Removes every finished job in the index; returns how many records still existed.
local cleared = 0
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  if redis.call('HGET', key, 'st') == ARGV[2] then
    redis.call('DEL', key)
    cleared = cleared + 1
  end
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[1])
return cleared
