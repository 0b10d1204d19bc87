-- spendgate redis ledger: script version 2, key layout 1 (the prelude of every script)
--
-- Amounts are integer nano-USD and instants integer microseconds since the Unix epoch. Lua
-- numbers are doubles, exact for integers up to 2^53: the Python side refuses amounts above
-- that, and every integer handed back to Redis goes through I() (never tostring, whose %.14g
-- would round a microsecond timestamp).

local function I(x)
  return string.format('%d', x)
end

-- What a windowed limit's bucket gets at a reservation's ending (limits.window_change).
-- used: {requests, input_tokens, output_tokens} or nil.
local function window_change(kind, taken, how, used, cost)
  if how == 'expired' then return 0 end
  if how == 'released' then
    if kind == 'requests' then return 0 end
    return -taken
  end
  if kind == 'usd' then return cost - taken end
  if used == nil then return 0 end
  local u
  if kind == 'requests' then u = used[1]
  elseif kind == 'input_tokens' then u = used[2]
  elseif kind == 'output_tokens' then u = used[3]
  elseif kind == 'tokens' then u = used[2] + used[3]
  else return 0 end
  return u - taken
end

-- What finish needs of an open request, in one HMGET (as end.lua and expire.lua read it).
local FIELDS = {'state', 'est', 'lines', 'takes', 'started', 'attrs'}

-- End the open reservation at rkey, whose FIELDS are d: its estimate leaves `reserved` and
-- `act` joins `spent` on every line, its limits get back what they are owed, the ended
-- request goes to the stream for the durable log, and its hash becomes what a retried call
-- needs (state, est, cost). Returns est, the lines JSON, and spent/reserved/alerted of every
-- line after the change.
local function finish(rkey, d, leases, id, how, now, act, ttl, stream, extra, used)
  local est = tonumber(d[2])
  local lines = cjson.decode(d[3])
  local out = {}
  local back = I(-est)
  local add = I(act)
  for _, ln in ipairs(lines) do
    local key, inst = ln[1], ln[2]
    redis.call('HINCRBY', key, 'r:' .. inst, back)
    if act ~= 0 then redis.call('HINCRBY', key, 's:' .. inst, add) end
    local v = redis.call('HMGET', key, 's:' .. inst, 'r:' .. inst, 'a:' .. inst)
    out[#out + 1] = v[1] or '0'
    out[#out + 1] = v[2] or '0'
    out[#out + 1] = v[3] or '0'
  end
  if d[4] and d[4] ~= '' then
    -- takes: {{'f'|'w', key, field, amount, kind}, ...}
    for _, t in ipairs(cjson.decode(d[4])) do
      local key, field, amount = t[2], t[3], t[4]
      if t[1] == 'f' then
        if redis.call('HINCRBY', key, field, I(-amount)) <= 0 then redis.call('HDEL', key, field) end
      else
        local change = window_change(t[5], amount, how, used, act)
        if change < 0 then
          local held = redis.call('HGET', key, field)
          -- never below zero; a bucket already pruned left the window and gets nothing
          if held then redis.call('HSET', key, field, I(math.max(tonumber(held) + change, 0))) end
        elseif change > 0 then
          redis.call('HINCRBY', key, field, I(change))
        end
      end
    end
  end
  -- the stream entry holds what the durable log keeps (drain.py's archived_fields)
  redis.call('XADD', stream, '*', 'id', id, 'state', how, 'est', d[2], 'started', d[5], 'attrs', d[6],
    'lines', d[3], 'cost', add, 'finished', now, unpack(extra))
  redis.call('ZREM', leases, id)
  redis.call('DEL', rkey)
  redis.call('HSET', rkey, 'state', how, 'est', d[2], 'cost', add)
  redis.call('PEXPIRE', rkey, ttl)
  return est, d[3], out
end
