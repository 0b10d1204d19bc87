-- spendgate redis ledger: script version 2, key layout 1
-- read: several reads on one snapshot, refused when the generation moved (a Redis that lost
-- its data would answer zeros) or, when given, the catalog version moved.
-- KEYS: generation, catalog. ARGV: 1 generation, 2 catalog version or '' (not checked), then
-- operations: 'hmget' key n field..., 'hgetall' key, 'zfrom' key min (members scored >= min),
-- 'get' key
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return {'generation', g or ''} end
if ARGV[2] ~= '' and (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return {'stale'} end
local res = {'ok'}
local i = 3
while i <= #ARGV do
  local op, key = ARGV[i], ARGV[i + 1]
  if op == 'hmget' then
    local n = tonumber(ARGV[i + 2])
    local fields = {}
    for j = 1, n do fields[j] = ARGV[i + 2 + j] end
    local v = redis.call('HMGET', key, unpack(fields))
    for j = 1, n do v[j] = v[j] or '' end
    res[#res + 1] = v
    i = i + 3 + n
  elseif op == 'hgetall' then
    res[#res + 1] = redis.call('HGETALL', key)
    i = i + 2
  elseif op == 'zfrom' then
    res[#res + 1] = redis.call('ZRANGEBYSCORE', key, ARGV[i + 2], '+inf')
    i = i + 3
  elseif op == 'get' then
    res[#res + 1] = redis.call('GET', key) or ''
    i = i + 2
  else
    return redis.error_reply('spendgate read.lua: unknown operation ' .. op)
  end
end
return res
