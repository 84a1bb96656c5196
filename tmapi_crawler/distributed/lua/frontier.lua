-- One step on the frontier's state shared by the cluster's workers (``frontier.state``): numbers
-- and claims in one hash, each id set in a key of its own, listed in a registry so that a new
-- crawl can drop them all (``begin.lua``). Nothing is written when the crawl is no longer the
-- caller's: a worker of an earlier crawl cannot touch the decisions of a new one.
-- A step's answer is remembered in a memo hash, under its field, so a step sent again answers
-- as it did the first time instead of applying twice: a step whose answer a lost connection
-- swallowed (a memo of its own, kept a while), or a step of a page decided again after its
-- worker died (the page's memo, which holds its reads too, dropped once the page is
-- acknowledged: ``ack.lua``, ``fail.lua``).
-- KEYS: crawl, numbers, sets registry, the memo, then the id set of each key in ARGV[6..]
--       (add_ids, forget).
-- ARGV: crawl id, memo field, memo seconds, remember reads (0/1), operation, key(s), value(s):
--   claim k | get k | add k n | raise_to k n | lower_to k n | add_ids k id... | forget k...
-- Returns {0} when the crawl is gone, else {1, remembered (0/1)} or {1, remembered, number}.
if not same_crawl(KEYS[1], ARGV[1]) then return {0} end
local memo, field, op, numbers, registry, key = KEYS[4], ARGV[2], ARGV[5], KEYS[2], KEYS[3],
                                                ARGV[6]
local function read()
  local value = redis.call('HGET', numbers, key)
  if value then return {1, 0, tonumber(value)} end
  return {1, 0}
end
local remembered = redis.call('HGET', memo, field)
if remembered then
  local result = cjson.decode(remembered)
  result[2] = 1
  return result
end
if op == 'get' and ARGV[4] ~= '1' then return read() end

local function apply()
  if op == 'get' then return read() end
  if op == 'claim' then
    return {1, 0, redis.call('HSETNX', numbers, key, 1)}
  end
  if op == 'add' then
    return {1, 0, redis.call('HINCRBY', numbers, key, ARGV[7])}
  end
  if op == 'raise_to' or op == 'lower_to' then
    local before, value = redis.call('HGET', numbers, key), tonumber(ARGV[7])
    if not before or (op == 'raise_to' and value > tonumber(before))
       or (op == 'lower_to' and value < tonumber(before)) then
      redis.call('HSET', numbers, key, ARGV[7])
    end
    if before then return {1, 0, tonumber(before)} end
    return {1, 0}
  end
  if op == 'add_ids' then
    local new = 0
    if #ARGV >= 7 then
      redis.call('SADD', registry, KEYS[5])
      for i = 7, #ARGV, 1000 do
        new = new + redis.call('SADD', KEYS[5], unpack(ARGV, i, math.min(i + 999, #ARGV)))
      end
    end
    return {1, 0, new}
  end
  if op == 'forget' then
    for i = 6, #ARGV do
      redis.call('HDEL', numbers, ARGV[i])
      redis.call('DEL', KEYS[i - 1])
      redis.call('SREM', registry, KEYS[i - 1])
    end
    return {1, 0}
  end
  return nil
end

local result = apply()
if not result then return redis.error_reply('unknown frontier operation ' .. tostring(op)) end
redis.call('HSET', memo, field, cjson.encode(result))
redis.call('EXPIRE', memo, ARGV[3])
return result
