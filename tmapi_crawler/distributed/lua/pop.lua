-- Lease the most urgent entries to a worker: they stay in Redis until acknowledged, failed or
-- given back. An entry id the dupefilter never saw was not queued by the cluster's own code: it
-- is leased all the same, and the worker refuses it.
-- KEYS: crawl, queue, entries, leases, deliveries, dupefilter. ARGV: crawl id, count.
-- Returns {1, id, entry ('' if missing), known (0/1), deliveries (this one included), ...},
-- or {0} when the crawl is gone.
if not same_crawl(KEYS[1], ARGV[1]) then return {0} end
local popped = redis.call('ZPOPMIN', KEYS[2], tonumber(ARGV[2]))
local out = {1}
for i = 1, #popped, 2 do
  local id = popped[i]
  redis.call('HSET', KEYS[4], id, popped[i + 1])
  local deliveries = redis.call('HINCRBY', KEYS[5], id, 1)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
  out[#out + 1] = redis.call('SISMEMBER', KEYS[6], id)
  out[#out + 1] = deliveries
end
return out
