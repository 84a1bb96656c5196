-- Everything `scrapy status` and the workers' progress lines show, read in one step, so that
-- every number comes from the same moment: the crawl, its queue counters, each worker with its
-- heartbeat, leases and progress counters, and the limiter.
-- KEYS: crawl, queue, dupefilter, done, failed, workers, progress, limiter limit, limiter
--       permits, limiter stop, sightings, frontier. ARGV: base, then the frontier's fields of
--       the queries begun and done.
-- Returns one JSON object.
local function hash(key)
  local flat, out = redis.call('HGETALL', key), {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
local now = now_s()
local failed, failed_known, refused = redis.call('HGETALL', KEYS[5]), 0, 0
for i = 1, #failed, 2 do
  failed_known = failed_known + redis.call('SISMEMBER', KEYS[3], failed[i])
  local ok, record = pcall(cjson.decode, failed[i + 1])
  if ok and type(record) == 'table' and type(record.reason) == 'string'
     and string.sub(record.reason, 1, 8) == 'refused:' then
    refused = refused + 1
  end
end
local workers = {}
for w, info in pairs(hash(KEYS[6])) do
  workers[#workers + 1] = {
    id = w, info = info,
    alive = redis.call('EXISTS', ARGV[1] .. ':alive:' .. w),
    leased = redis.call('HLEN', ARGV[1] .. ':leases:' .. w),
    progress = redis.call('HGET', KEYS[7], w) or '',
  }
end
return cjson.encode({
  now = now,
  crawl = hash(KEYS[1]),
  queued = redis.call('ZCARD', KEYS[2]),
  known = redis.call('SCARD', KEYS[3]),
  done = tonumber(redis.call('GET', KEYS[4]) or '0'),
  sightings = tonumber(redis.call('GET', KEYS[11]) or '0'),
  queries = tonumber(redis.call('HGET', KEYS[12], ARGV[2]) or '0'),
  queries_done = tonumber(redis.call('HGET', KEYS[12], ARGV[3]) or '0'),
  failed = #failed / 2,
  failed_known = failed_known,
  refused = refused,
  workers = workers,
  limit = tonumber(redis.call('GET', KEYS[8]) or '0'),
  permits = redis.call('ZCOUNT', KEYS[9], math.floor(now * 1000), '+inf'),
  stop = hash(KEYS[10]),
})
