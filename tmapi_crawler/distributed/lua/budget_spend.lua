-- Take one paid call from the cluster crawl's budget, atomically.
-- The counter belongs to a session: the crawl (its id) and the last stop of the cluster (the
-- limiter's stop flag). A budget stop sets that flag, so the workers started again afterwards
-- (with a higher TMAPI_MAX_REQUESTS, or the same one for another portion) count afresh, while
-- a worker started before the stop is refused, like the limiter refuses it.
-- KEYS: budget, crawl, limiter stop. ARGV: maximum (> 0), worker started ms.
-- Returns {1, spent} when the call may be sent, {0, spent} when the budget is spent, and
-- {-1, spent} when the cluster was stopped after this worker started.
local stop_at = redis.call('HGET', KEYS[3], 'at')
if stop_at and tonumber(stop_at) >= tonumber(ARGV[2]) then
  return {-1, tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')}
end
local session = (redis.call('HGET', KEYS[2], 'id') or '') .. '@' .. (stop_at or '0')
if redis.call('HGET', KEYS[1], 'session') ~= session then
  redis.call('HSET', KEYS[1], 'session', session, 'spent', 0)
end
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
if spent >= tonumber(ARGV[1]) then
  return {0, spent}
end
return {1, redis.call('HINCRBY', KEYS[1], 'spent', 1)}
