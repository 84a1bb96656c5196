-- Stop every worker started before now (the quota is gone), and tell them at once.
-- KEYS: stop. ARGV: reason, channel. Returns the time of the stop (ms).
local now = now_ms()
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'at', now)
redis.call('PUBLISH', ARGV[2], cjson.encode({reason = ARGV[1], at = now}))
return now
