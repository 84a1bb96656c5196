-- A page given up on for good, or an entry refused: out of the worker's leases, into the failed
-- list with its entry, for `scrapy status` and for people to inspect; with the worker's progress
-- counters as of now (a failure is counted, by its answers, like an acknowledgement).
-- How the page was decided (the frontier's memo of it) goes with its lease.
-- KEYS: crawl, leases, deliveries, entries, failed, progress, and the page's memo if any.
-- ARGV: crawl id, lease id, reason, worker, progress snapshot ('' for none).
-- Returns 1 when it was leased to this worker, 0 if not, -1 when the crawl is gone.
if not same_crawl(KEYS[1], ARGV[1]) then return -1 end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[6], ARGV[4], ARGV[5]) end
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then return 0 end
local n = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
redis.call('HDEL', KEYS[3], ARGV[2])
if KEYS[7] then redis.call('DEL', KEYS[7]) end
record_failed(KEYS[5], KEYS[4], ARGV[2], ARGV[3], ARGV[4], n)
return 1
