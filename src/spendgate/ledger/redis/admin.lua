-- spendgate redis ledger: script version 2, key layout 1
-- admin: definitions changed in the durable store; move the catalog version so every process
-- reloads them (and, by operation, reset spend or count what is in flight).
-- KEYS: generation, catalog, limit generations, leases, [a budget's window hash]
-- ARGV: 1 generation, 2 operation, then:
--   bump     3 limit id or '', 4 'new' (its counts start over) | 'del' | ''
--   reset    3 instance, 4 '1' for every instance, 5 ttl ms of the window hash
--   inflight 3 budget id, 4 request key prefix
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return {'generation', g or ''} end
local op = ARGV[2]
if op == 'bump' then
  local v = redis.call('INCR', KEYS[2])
  if ARGV[3] ~= '' then
    if ARGV[4] == 'new' then redis.call('HSET', KEYS[3], ARGV[3], I(v))
    elseif ARGV[4] == 'del' then redis.call('HDEL', KEYS[3], ARGV[3]) end
  end
  return {'ok', I(v)}
elseif op == 'reset' then
  local key = KEYS[5]
  if ARGV[4] == '1' then
    local flat = redis.call('HGETALL', key)
    for x = 1, #flat, 2 do
      local kind = string.sub(flat[x], 1, 2)
      if kind == 's:' then redis.call('HSET', key, flat[x], '0')
      elseif kind == 'a:' then redis.call('HDEL', key, flat[x]) end
    end
  else
    redis.call('HSET', key, 's:' .. ARGV[3], '0')
    redis.call('HDEL', key, 'a:' .. ARGV[3])
    if ARGV[5] ~= '0' then redis.call('PEXPIRE', key, ARGV[5]) end
  end
  return {'ok', I(redis.call('INCR', KEYS[2]))}
elseif op == 'inflight' then
  local count, held = 0, 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
    local d = redis.call('HMGET', ARGV[4] .. id, 'est', 'lines')
    if d[1] and d[2] then
      local n = 0
      for _, ln in ipairs(cjson.decode(d[2])) do
        if ln[3] == ARGV[3] then n = n + 1 end
      end
      if n > 0 then
        count = count + 1
        held = held + n * tonumber(d[1])
      end
    end
  end
  return {'ok', I(redis.call('INCR', KEYS[2])), count, I(held)}
end
return redis.error_reply('spendgate admin.lua: unknown operation ' .. op)
