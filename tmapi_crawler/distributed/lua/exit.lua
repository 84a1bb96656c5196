-- A worker leaves cleanly: it says so, with its last progress counters, unless the crawl is no
-- longer the one it worked for.
-- KEYS: crawl, alive, workers, progress. ARGV: crawl id, worker, info, progress snapshot.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
register(KEYS[2], KEYS[3], ARGV[2], 0, ARGV[3])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
return 1
