-- A success while the limit is lowered: one slot back after `recovery` of them in a row.
-- KEYS: limit, successes. ARGV: maximum, recovery, channel. Returns {raised (0/1), limit}.
local maximum = tonumber(ARGV[1])
local limit = tonumber(redis.call('GET', KEYS[1]) or maximum)
if limit >= maximum then return {0, maximum} end
if redis.call('INCR', KEYS[2]) < tonumber(ARGV[2]) then return {0, limit} end
redis.call('DEL', KEYS[2])
limit = limit + 1
if limit >= maximum then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], limit) end
redis.call('PUBLISH', ARGV[3], 'limit')
return {1, limit}
