-- Return leases to the queue (see give_back in _lib.lua).
-- KEYS: leases, deliveries, failed, queue, entries.
-- ARGV: counted (0/1), max deliveries, worker, reason, lease ids...
-- Returns {re-queued, failed as poison}.
local requeued, failed = 0, 0
for i = 5, #ARGV do
  local r = give_back(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[i], ARGV[1] == '1',
                      tonumber(ARGV[2]), ARGV[3], ARGV[4])
  if r == 1 then requeued = requeued + 1 elseif r == 0 then failed = failed + 1 end
end
return {requeued, failed}
