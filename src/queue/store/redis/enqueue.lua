-- KEYS: job, wait, delayed, signal, seq, expiry, done:completed, done:failed, done:cancelled
-- ARGV: id, payload, enqueued_at_ms, due_at_ms (0: now), check_existing ('1' or '0')
-- Returns 1 (a new job) or 0 (a job with this id is queued or running: nothing changed).
local key, id = KEYS[1], ARGV[1]
local generation = 0
if ARGV[5] == '1' then
  local old = redis.call('HMGET', key, 'st', 'gen')
  if old[1] == 'q' or old[1] == 'r' then
    return 0
  end
  if old[1] then
    -- A finished job's id is reused: its record goes, its generation carries on so that
    -- fencing tokens handed to downstream systems keep going up.
    generation = tonumber(old[2]) or 0
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[6], id)
    redis.call('ZREM', KEYS[7], id)
    redis.call('ZREM', KEYS[8], id)
    redis.call('ZREM', KEYS[9], id)
  end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', key, 'st', 'q', 'att', 0, 'enq', ARGV[3], 'pl', ARGV[2], 'seq', seq,
  'gen', generation)
local due = tonumber(ARGV[4])
if due > 0 and due > now_ms() then
  redis.call('HSET', key, 'due', due)
  redis.call('ZADD', KEYS[3], due, id)
else
  redis.call('RPUSH', KEYS[2], id)
end
signal(KEYS[4])
return 1
