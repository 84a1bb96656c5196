-- A 503: one slot less for the whole cluster (down to 1).
-- KEYS: limit, successes. ARGV: maximum. Returns {lowered (0/1), limit}.
local maximum = tonumber(ARGV[1])
local limit = tonumber(redis.call('GET', KEYS[1]) or maximum)
if limit > maximum then limit = maximum end
redis.call('DEL', KEYS[2])
if limit > 1 then
  redis.call('SET', KEYS[1], limit - 1)
  return {1, limit - 1}
end
return {0, limit}
