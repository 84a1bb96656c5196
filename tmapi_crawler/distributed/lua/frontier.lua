-- One step on the frontier's state shared by the cluster's workers (``frontier.state``): numbers
-- and claims in one hash, each id set in a key of its own, listed in a registry so that a new
-- crawl can drop them all (``begin.lua``). Nothing is written when the crawl is no longer the
-- caller's: a worker of an earlier crawl cannot touch the decisions of a new one. A change is
-- remembered for a while under its step id, so a step sent again after a lost connection (it
-- may have been applied) answers as it did the first time instead of applying twice.
-- KEYS: crawl, numbers, sets registry, the step's memo, then the id set of each key in ARGV[4..]
--       (add_ids, forget).
-- ARGV: crawl id, step id, operation, key(s), then the value(s):
--   claim k | get k | add k n | raise_to k n | lower_to k n | add_ids k id... | forget k...
-- Returns {0} when the crawl is gone, else {1} (nothing, or no number) or {1, number}.
local MEMO_SECONDS = 600
if not same_crawl(KEYS[1], ARGV[1]) then return {0} end
local op, numbers, registry, key = ARGV[3], KEYS[2], KEYS[3], ARGV[4]
if op == 'get' then
  local value = redis.call('HGET', numbers, key)
  if value then return {1, tonumber(value)} end
  return {1}
end
local memo = redis.call('GET', KEYS[4])
if memo then return cjson.decode(memo) end

local function apply()
  if op == 'claim' then
    return {1, redis.call('HSETNX', numbers, key, 1)}
  end
  if op == 'add' then
    return {1, redis.call('HINCRBY', numbers, key, ARGV[5])}
  end
  if op == 'raise_to' or op == 'lower_to' then
    local before, value = redis.call('HGET', numbers, key), tonumber(ARGV[5])
    if not before or (op == 'raise_to' and value > tonumber(before))
       or (op == 'lower_to' and value < tonumber(before)) then
      redis.call('HSET', numbers, key, ARGV[5])
    end
    if before then return {1, tonumber(before)} end
    return {1}
  end
  if op == 'add_ids' then
    local new = 0
    if #ARGV >= 5 then
      redis.call('SADD', registry, KEYS[5])
      for i = 5, #ARGV, 1000 do
        new = new + redis.call('SADD', KEYS[5], unpack(ARGV, i, math.min(i + 999, #ARGV)))
      end
    end
    return {1, new}
  end
  if op == 'forget' then
    for i = 4, #ARGV do
      redis.call('HDEL', numbers, ARGV[i])
      redis.call('DEL', KEYS[i + 1])
      redis.call('SREM', registry, KEYS[i + 1])
    end
    return {1}
  end
  return nil
end

local result = apply()
if not result then return redis.error_reply('unknown frontier operation ' .. tostring(op)) end
redis.call('SET', KEYS[4], cjson.encode(result), 'EX', MEMO_SECONDS)
return result
