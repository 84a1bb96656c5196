-- Give permits back and wake the workers waiting for one.
-- KEYS: permits. ARGV: channel, permit ids... Returns how many were still held.
local n = 0
for i = 2, #ARGV do n = n + redis.call('ZREM', KEYS[1], ARGV[i]) end
if n > 0 then redis.call('PUBLISH', ARGV[1], n) end
return n
