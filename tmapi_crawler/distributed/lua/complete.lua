-- The cluster crawl is complete when nothing is queued and nothing leased, by any worker, live
-- or dead, and no `scrapy seed` is still at work on it. Exactly one worker completes it (it finalises the crawl); every entry ever queued
-- must then be done or failed, or Redis lost some of them (e.g. a restart with only RDB
-- snapshots): the crawl is then marked lost, never complete. The lowered concurrency limit is
-- reset, so it does not slow the next crawl.
-- KEYS: crawl, queue, workers, dupefilter, done, failed, limiter limit, limiter successes.
-- ARGV: base, crawl id, worker.
-- Returns {'gone'}, {'busy'}, or {state ('complete' or 'lost'), finaliser (0/1), missing}.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[2] then return {'gone'} end
local lost = redis.call('HGET', KEYS[1], 'lost')
if lost then return {'lost', 0, tonumber(redis.call('HGET', KEYS[1], 'missing') or '0')} end
if redis.call('HEXISTS', KEYS[1], 'completed_at') == 1 then return {'complete', 0, 0} end
if tonumber(redis.call('HGET', KEYS[1], 'seeding_until') or '0') > now_ms() then
  return {'busy'}  -- a seed is still queueing (seeding.lua)
end
if redis.call('ZCARD', KEYS[2]) > 0 then return {'busy'} end
for _, w in ipairs(redis.call('HKEYS', KEYS[3])) do
  if redis.call('HLEN', ARGV[1] .. ':leases:' .. w) > 0 then return {'busy'} end
end
local finished = tonumber(redis.call('GET', KEYS[5]) or '0')
for _, id in ipairs(redis.call('HKEYS', KEYS[6])) do
  finished = finished + redis.call('SISMEMBER', KEYS[4], id)
end
local missing = redis.call('SCARD', KEYS[4]) - finished
redis.call('DEL', KEYS[7], KEYS[8])
if missing > 0 then
  redis.call('HSET', KEYS[1], 'lost', 'counts', 'lost_at', now_s(), 'missing', missing)
  return {'lost', 1, missing}
end
redis.call('HSET', KEYS[1], 'completed_at', now_s(), 'completed_by', ARGV[3])
return {'complete', 1, 0}
