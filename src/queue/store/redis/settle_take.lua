-- One round trip for a worker's store step: settles attempts in order, then takes jobs.
-- KEYS: active, wait, delayed, signal, expiry, done:completed, done:failed, done:cancelled,
--       then the job key of each settlement
-- ARGV: job key prefix, lease_ms, ttl_ms, settlements n, takes max, then max tokens, then
--       per settlement: id, token, generation, kind, data, delay_ms
-- Returns {{status letter or 'stale', per settlement}, {id, payload, attempt, enqueued_at,
-- started_at, generation, per job taken}}.
local k = {active = KEYS[1], wait = KEYS[2], delayed = KEYS[3], signal = KEYS[4],
  expiry = KEYS[5], done_c = KEYS[6], done_f = KEYS[7], done_x = KEYS[8]}
local prefix, lease_ms, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n, max = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local settled = {}
for i = 1, n do
  local a = 5 + max + (i - 1) * 6
  settled[i] = settle_one(k, KEYS[8 + i], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    ARGV[a + 5], tonumber(ARGV[a + 6]), ttl, now)
end
local taken = {}
if max > 0 then
  promote(k.wait, k.delayed, prefix, now)
  for i = 1, max do
    local job = take_one(k.wait, k.active, prefix, ARGV[5 + i], lease_ms, now)
    if not job then
      break
    end
    for _, field in ipairs(job) do
      taken[#taken + 1] = field
    end
  end
end
return {settled, taken}
