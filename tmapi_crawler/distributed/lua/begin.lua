-- Join the cluster crawl, or start a new one. A new one starts when there is none, when Redis
-- lost the previous one, or (with `renew`: `scrapy seed`, a seeding worker) when the previous
-- one is complete or over (nothing queued, nothing leased, no worker alive). A new crawl starts
-- with empty bookkeeping and the account's full concurrency limit. Joining and registering the
-- worker are one step, so two workers starting together cannot both start a crawl.
-- KEYS: crawl, queue, workers, dupefilter, done, failed, deliveries, entries, progress,
--       limiter limit, limiter successes, sightings, frontier numbers, frontier sets.
-- ARGV: base, renew (0/1), the id a new crawl takes (a new one, or the id of the interrupted
--       crawl `scrapy seed` resumes: storage/ledger.py), worker ('' for none), ttl ms, info,
--       seeding ms (`scrapy seed`: no worker completes the crawl that long, see seeding.lua).
-- Returns {id, fresh (0/1), state}: state 'lost' when a worker without `renew` finds a crawl
-- that Redis lost (it must not crawl on as if nothing happened).
local id = redis.call('HGET', KEYS[1], 'id')
local lost = redis.call('HGET', KEYS[1], 'lost')
local fresh = false
if not id then
  fresh = true
elseif ARGV[2] == '1' then
  if lost or redis.call('HEXISTS', KEYS[1], 'completed_at') == 1 then
    fresh = true
  elseif redis.call('ZCARD', KEYS[2]) == 0 then
    fresh = true
    for _, w in ipairs(redis.call('HKEYS', KEYS[3])) do
      if redis.call('EXISTS', ARGV[1] .. ':alive:' .. w, ARGV[1] .. ':leases:' .. w) > 0 then
        fresh = false
        break
      end
    end
  end
elseif lost then
  return {id, 0, 'lost'}
end
if fresh then
  for _, w in ipairs(redis.call('HKEYS', KEYS[3])) do
    redis.call('DEL', ARGV[1] .. ':leases:' .. w)
  end
  for _, ids in ipairs(redis.call('SMEMBERS', KEYS[14])) do
    redis.call('DEL', ids)
  end
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8],
             KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14])
  redis.call('HSET', KEYS[1], 'id', ARGV[3], 'started_at', now_s())
  id = ARGV[3]
end
if tonumber(ARGV[7]) > 0 then
  redis.call('HSET', KEYS[1], 'seeding_until', now_ms() + tonumber(ARGV[7]))
end
if ARGV[4] ~= '' then
  register(ARGV[1] .. ':alive:' .. ARGV[4], KEYS[3], ARGV[4], ARGV[5], ARGV[6])
end
return {id, fresh and 1 or 0, 'ok'}
