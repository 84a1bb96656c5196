-- Pages done (parsed, their products stored), and the worker's progress counters as of now: one
-- step, so `scrapy status` never sees pages done without the counters that go with them.
-- KEYS: crawl, leases, deliveries, entries, done, progress.
-- ARGV: crawl id, worker, progress snapshot (JSON), lease ids...
-- Returns how many were still leased to this worker, or -1 when the crawl is gone.
if not same_crawl(KEYS[1], ARGV[1]) then return -1 end
local n = 0
for i = 4, #ARGV do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('INCRBY', KEYS[5], n) end
redis.call('HSET', KEYS[6], ARGV[2], ARGV[3])
return n
