-- Pages done (parsed, their products stored), and the worker's progress counters as of now: one
-- step, so `scrapy status` never sees pages done without the counters that go with them. The
-- products of each page still leased here are added to the crawl's sightings: a page counts
-- once, however many workers fetched it (a worker killed before its acknowledgement adds none).
-- How each page was decided (the frontier's memo of it) is dropped with its lease: the
-- follow-up pages it asked for were queued before.
-- KEYS: crawl, leases, deliveries, entries, done, progress, sightings, then the memo of each
--       page (none given: none dropped).
-- ARGV: crawl id, worker, progress snapshot (JSON), then lease id, products of its page...
-- Returns how many were still leased to this worker, or -1 when the crawl is gone.
if not same_crawl(KEYS[1], ARGV[1]) then return -1 end
local n, products = 0, 0
for i = 4, #ARGV, 2 do
  if redis.call('HDEL', KEYS[2], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
    local memo = KEYS[7 + (i - 2) / 2]
    if memo then redis.call('DEL', memo) end
    n = n + 1
    products = products + tonumber(ARGV[i + 1])
  end
end
if n > 0 then redis.call('INCRBY', KEYS[5], n) end
if products > 0 then redis.call('INCRBY', KEYS[7], products) end
redis.call('HSET', KEYS[6], ARGV[2], ARGV[3])
return n
