-- spendgate redis ledger: script version 2, key layout 1
-- expire: charge a batch of reservations whose lease ran out at their estimate.
-- KEYS: generation, leases, stream
-- ARGV: 1 generation, 2 now us, 3 batch size, 4 ended ttl ms, 5 request key prefix
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return {'generation', g or ''} end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local res = {'ok'}
for _, id in ipairs(due) do
  local rkey = ARGV[5] .. id
  local d = redis.call('HMGET', rkey, unpack(FIELDS))
  if d[1] == 'open' then
    local est = tonumber(d[2])
    local e, lines, out = finish(rkey, d, KEYS[2], id, 'expired', ARGV[2], est, ARGV[4], KEYS[3],
      {'status', 'expired'}, nil)
    res[#res + 1] = {id, I(e), lines, out}
  else
    redis.call('ZREM', KEYS[2], id)  -- ended already: only its lease was left
  end
end
return res
