-- A worker's heartbeat and its view of the cluster, in one step. Nothing is written when the
-- crawl is gone (Redis lost it, or a new one was seeded): a worker must not rebuild a crawl's
-- bookkeeping from nothing, as if nothing happened.
-- KEYS: crawl, queue, workers. ARGV: base, crawl id, worker, ttl ms, info.
-- Returns {'lost', current id or ''} or {'ok', queued, leased by live workers, live workers,
-- complete (0/1), dead workers still holding leases...}.
local id = redis.call('HGET', KEYS[1], 'id')
if id ~= ARGV[2] or redis.call('HEXISTS', KEYS[1], 'lost') == 1 then
  return {'lost', id or ''}
end
register(ARGV[1] .. ':alive:' .. ARGV[3], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
local leased, live, out = 0, 0, {}
for _, w in ipairs(redis.call('HKEYS', KEYS[3])) do
  local n = redis.call('HLEN', ARGV[1] .. ':leases:' .. w)
  if redis.call('EXISTS', ARGV[1] .. ':alive:' .. w) == 1 then
    leased = leased + n
    live = live + 1
  elseif n > 0 then
    out[#out + 1] = w
  end
end
return {'ok', redis.call('ZCARD', KEYS[2]), leased, live,
        redis.call('HEXISTS', KEYS[1], 'completed_at'), unpack(out)}
