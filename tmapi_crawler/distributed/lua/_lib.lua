-- Shared by the scripts that need it (prepended by tmapi_crawler.distributed.scripts).

-- Redis's clock, in seconds (float) and milliseconds (integer): every worker agrees on it.
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Whether `crawl` (the crawl hash) is still the crawl `id` this worker works for: gone after a
-- Redis restart without persistence or a FLUSHALL, renewed once a new crawl was seeded.
local function same_crawl(crawl, id)
  return redis.call('HGET', crawl, 'id') == id and redis.call('HEXISTS', crawl, 'lost') == 0
end

-- Record an entry as failed for good, with the entry itself, for `scrapy status` and people.
local function record_failed(failed, entries, id, reason, worker, deliveries)
  local entry = redis.call('HGET', entries, id)
  redis.call('HDEL', entries, id)
  redis.call('HSET', failed, id, cjson.encode({reason = reason, at = now_s(), worker = worker,
                                               deliveries = deliveries, entry = entry or ''}))
end

-- Give one lease back to the queue, or, when `counted` and delivered `max` times already, record
-- it as failed: a request that kills its workers must not loop forever. A clean give-back
-- (`counted` false) does not count as a delivery. 1: re-queued, 0: failed, -1: not leased.
local function give_back(leases, deliveries, failed, queue, entries, id, counted, max, worker,
                         reason)
  local score = redis.call('HGET', leases, id)
  if not score then return -1 end
  redis.call('HDEL', leases, id)
  local n
  if counted then
    n = tonumber(redis.call('HGET', deliveries, id) or '0')
  else
    n = redis.call('HINCRBY', deliveries, id, -1)
  end
  if counted and n >= max then
    redis.call('HDEL', deliveries, id)
    record_failed(failed, entries, id, reason, worker, n)
    return 0
  end
  redis.call('ZADD', queue, score, id)
  return 1
end

-- Record a worker's heartbeat (ttl > 0) or its exit (ttl 0), stamped with Redis's clock.
local function register(alive, workers, worker, ttl, info)
  local fields = cjson.decode(info)
  fields.last_seen = now_s()
  if tonumber(ttl) > 0 then
    redis.call('SET', alive, '1', 'PX', ttl)
  else
    redis.call('DEL', alive)
  end
  redis.call('HSET', workers, worker, cjson.encode(fields))
end
