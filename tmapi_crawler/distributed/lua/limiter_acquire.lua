-- Grant up to `wanted` concurrency permits to a worker, never more than the limit in use at once.
-- Also renews the permits the worker holds. When the limiter's epoch is new (the first worker
-- on this Redis, or Redis lost its state) it puts them back too, and grants nothing for `grace`
-- ms, so that every live worker can put back what it has in flight first. Only then: a permit
-- released by another call meanwhile must never come back to life and leak.
-- When other workers wait too, a worker gets at most its share (the limit split between the
-- workers waiting) while it holds that many.
-- KEYS: epoch, limit, permits, stop, waiting.
-- ARGV: maximum, wanted, lease ms, worker, permit id prefix, started ms, grace ms, stale ms,
--       held permit ids...
-- Returns {-1, reason} when the cluster was stopped after this worker started, else
-- {limit, permits in use, other workers waiting, granted ids...}.
local now = now_ms()
local since = tonumber(redis.call('GET', KEYS[1]) or '-1')
if since < 0 then
  since = now
  redis.call('SET', KEYS[1], now)
end
local stop_at = redis.call('HGET', KEYS[4], 'at')
if stop_at and tonumber(stop_at) >= tonumber(ARGV[6]) then
  return {-1, redis.call('HGET', KEYS[4], 'reason')}
end
local maximum = tonumber(ARGV[1])
local limit = tonumber(redis.call('GET', KEYS[2]) or maximum)
if limit > maximum then limit = maximum end
local worker, lease = ARGV[4], tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local fresh = now < since + tonumber(ARGV[7])
for i = 9, #ARGV do
  if fresh then
    redis.call('ZADD', KEYS[3], now + lease, ARGV[i])
  else
    redis.call('ZADD', KEYS[3], 'XX', now + lease, ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[8]))
local others = redis.call('ZCARD', KEYS[5])
if redis.call('ZSCORE', KEYS[5], worker) then others = others - 1 end
local wanted = tonumber(ARGV[2])
local used = redis.call('ZCARD', KEYS[3])
local grant = 0
if not fresh then
  grant = math.min(wanted, limit - used)
  if others > 0 and grant > 0 then
    local prefix, mine = worker .. ':', 0
    for _, p in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      if string.sub(p, 1, #prefix) == prefix then mine = mine + 1 end
    end
    grant = math.min(grant, math.ceil(limit / (others + 1)) - mine)
  end
  if grant < 0 then grant = 0 end
end
if wanted > grant then
  redis.call('ZADD', KEYS[5], now, worker)
else
  redis.call('ZREM', KEYS[5], worker)
end
local out = {limit, used + grant, others}
for i = 1, grant do
  local id = ARGV[5] .. ':' .. i
  redis.call('ZADD', KEYS[3], now + lease, id)
  out[#out + 1] = id
end
return out
