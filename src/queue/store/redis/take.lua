-- KEYS: wait, delayed, active
-- ARGV: job key prefix, token, lease_ms
-- Moves due delayed jobs to the wait list, then takes the oldest queued job (`take_one`).
-- Returns {1, id, payload, attempt, enqueued_at, started_at, generation}, or
-- {0, ms until the next delayed job is due (-1: none)}.
local now = now_ms()
promote(KEYS[1], KEYS[2], ARGV[1], now)
local job = take_one(KEYS[1], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3]), now)
if job then
  return {1, job[1], job[2], job[3], job[4], job[5], job[6]}
end
return {0, next_due(KEYS[2], now)}
