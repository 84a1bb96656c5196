-- Say, in what Redis has left, that the crawl's state was lost, so that `scrapy status` shows
-- it and no worker joins the remains as if it were whole. Only when the crawl hash is gone (or
-- still this crawl): a crawl seeded since is left alone.
-- KEYS: crawl. ARGV: crawl id, reason.
local id = redis.call('HGET', KEYS[1], 'id')
if id and id ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'lost', ARGV[2], 'lost_at', now_s())
return 1
