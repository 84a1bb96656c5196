-- `scrapy seed` is still at work on the crawl (replaying a resumed crawl's held pages, then
-- queueing what is left): while it is, no worker may take the empty queue for the crawl's end
-- (complete.lua). Renewed for `ms` more milliseconds, or over (0); a seed that died stops
-- holding the crawl once its last renewal ran out.
-- KEYS: crawl. ARGV: crawl id, ms.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], 'seeding_until', now_ms() + tonumber(ARGV[2]))
else
  redis.call('HDEL', KEYS[1], 'seeding_until')
end
return 1
