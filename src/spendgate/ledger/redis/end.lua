-- spendgate redis ledger: script version 2, key layout 1
-- end: settle or release one reservation (idempotent: an ended one reports how it ended).
-- KEYS: generation, request, leases, stream
-- ARGV: 1 generation, 2 'settled'|'released', 3 now us, 4 actual, 5 ended ttl ms, 6 request id,
--       7 '1' when use is reported, 8-10 requests, input tokens, output tokens used,
--       then field/value pairs to keep on the request (status, model, usage, breakdown)
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return {'generation', g or ''} end
local d = redis.call('HMGET', KEYS[2], unpack(FIELDS))
local st = d[1]
if not st then return {'unknown'} end
if st ~= 'open' then
  local e = redis.call('HMGET', KEYS[2], 'est', 'cost')
  return {'ended', st, e[1] or '0', e[2] or '0'}
end
local used = nil
if ARGV[7] == '1' then used = {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])} end
local extra = {}
for i = 11, #ARGV do extra[#extra + 1] = ARGV[i] end
local est, lines, out = finish(KEYS[2], d, KEYS[3], ARGV[6], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  ARGV[5], KEYS[4], extra, used)
return {ARGV[2], I(est), lines, out}
