-- Queue entries not seen before: marking an entry seen and queueing it is one step, so a worker
-- dying between the two cannot leave an entry marked seen but never queued.
-- KEYS: crawl, dupefilter, queue, entries. ARGV: crawl id, then (entry id, score, entry)...
-- Returns {1, added (0/1) per entry}, or {0} when the crawl is no longer this one.
if not same_crawl(KEYS[1], ARGV[1]) then return {0} end
local added = {1}
for i = 2, #ARGV, 3 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i])
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 2])
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
end
return added
