-- Give a dead worker's leases back (or fail the poison ones) and free its concurrency permits.
-- KEYS: alive, leases, deliveries, failed, queue, entries, permits.
-- ARGV: max deliveries, worker, channel. Returns {re-queued, failed as poison}.
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0} end
local requeued, failed = 0, 0
for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
  local r = give_back(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], id, true,
                      tonumber(ARGV[1]), ARGV[2], 'worker_lost')
  if r == 1 then requeued = requeued + 1 elseif r == 0 then failed = failed + 1 end
end
local prefix = ARGV[2] .. ':'
local freed = 0
for _, p in ipairs(redis.call('ZRANGE', KEYS[7], 0, -1)) do
  if string.sub(p, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[7], p)
    freed = freed + 1
  end
end
if freed > 0 then redis.call('PUBLISH', ARGV[3], 'reaped') end
return {requeued, failed}
