-- spendgate redis ledger: script version 2, key layout 1
-- reserve: hold the estimate in every budget line and the demand in every limit instance, or
-- nothing at all.
-- KEYS: generation, catalog, request, leases, one hash per budget line, two keys per limit
--       (its counts and, for a window, its instance index)
-- ARGV: 1 generation, 2 catalog version, 3 request id, 4 estimate, 5 now us, 6 expires us,
--       7 lines, 8 limits, 9 attributes JSON, 10 lines JSON, 11 takes JSON, 12 refuse after
--       the checks ('1': a prompt_tokens limit refuses, after the budgets and earlier limits),
--       then per line: instance, cap, ttl ms; per limit: 'f'|'w', instance, need, amount,
--       bucket, oldest bucket, ttl ms
local gc = redis.call('MGET', KEYS[1], KEYS[2])
if gc[1] ~= ARGV[1] then return {'generation', gc[1] or ''} end
if (gc[2] or '') ~= ARGV[2] then return {'stale'} end
local rkey = KEYS[3]
if redis.call('EXISTS', rkey) == 1 then
  local d = redis.call('HMGET', rkey, 'state', 'est', 'attrs', 'started', 'expires', 'lines')
  return {'exists', d[1] or '', d[2] or '', d[3] or '', d[4] or '', d[5] or '', d[6] or ''}
end
local est = tonumber(ARGV[4])
local nb, nl = tonumber(ARGV[7]), tonumber(ARGV[8])
local a = 13
for i = 1, nb do
  local v = redis.call('HMGET', KEYS[4 + i], 's:' .. ARGV[a], 'r:' .. ARGV[a])
  local s, r = tonumber(v[1] or '0'), tonumber(v[2] or '0')
  if s + r + est > tonumber(ARGV[a + 1]) then return {'budget', i, v[1] or '0', v[2] or '0'} end
  a = a + 3
end
local la = a
local k = 4 + nb
for j = 1, nl do
  local key, inst = KEYS[k + 2 * j - 1], ARGV[a + 1]
  local need, amount = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if ARGV[a] == 'f' then
    local held = tonumber(redis.call('HGET', key, inst) or '0')
    if held + need > amount then return {'limit', j, I(held)} end
  else
    local oldest = tonumber(ARGV[a + 5])
    local flat = redis.call('HGETALL', key)
    local sum = 0
    local kept = {}
    for x = 1, #flat, 2 do
      if tonumber(flat[x]) < oldest then
        redis.call('HDEL', key, flat[x])  -- left the window for good (time only moves on)
      else
        sum = sum + tonumber(flat[x + 1])
        kept[#kept + 1] = flat[x]
        kept[#kept + 1] = flat[x + 1]
      end
    end
    if sum + need > amount then return {'limit', j, I(sum), kept} end
  end
  a = a + 7
end
if ARGV[12] == '1' then return {'prompt'} end
a = 13
for i = 1, nb do
  local key = KEYS[4 + i]
  redis.call('HINCRBY', key, 'r:' .. ARGV[a], ARGV[4])
  if ARGV[a + 2] ~= '0' then redis.call('PEXPIRE', key, ARGV[a + 2]) end
  a = a + 3
end
for j = 1, nl do
  local key, index = KEYS[k + 2 * j - 1], KEYS[k + 2 * j]
  if ARGV[a] == 'f' then
    redis.call('HINCRBY', key, ARGV[a + 1], ARGV[a + 2])
  else
    redis.call('HINCRBY', key, ARGV[a + 4], ARGV[a + 2])
    redis.call('ZADD', index, ARGV[a + 4], ARGV[a + 1])
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. ARGV[a + 5])
    redis.call('PEXPIRE', index, ARGV[a + 6])
  end
  redis.call('PEXPIRE', key, ARGV[a + 6])
  a = a + 7
end
redis.call('HSET', rkey, 'id', ARGV[3], 'state', 'open', 'est', ARGV[4], 'started', ARGV[5],
  'expires', ARGV[6], 'attrs', ARGV[9], 'lines', ARGV[10], 'takes', ARGV[11])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[3])
return {'ok'}
