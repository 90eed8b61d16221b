-- KEYS: job, active, wait, delayed, signal, expiry, done:completed, done:failed,
--       done:cancelled
-- ARGV: id, token, generation, kind, data, delay_ms, ttl_ms
-- Ends one leased attempt (`settle_one`); returns the new status letter or 'stale'.
local k = {active = KEYS[2], wait = KEYS[3], delayed = KEYS[4], signal = KEYS[5],
  expiry = KEYS[6], done_c = KEYS[7], done_f = KEYS[8], done_x = KEYS[9]}
return settle_one(k, KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
  tonumber(ARGV[6]), tonumber(ARGV[7]), now_ms())
