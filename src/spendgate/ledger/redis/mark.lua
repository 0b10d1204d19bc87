-- spendgate redis ledger: script version 2, key layout 1
-- mark: raise the highest threshold announced for budget lines, once per window across every
-- process; answers what each line had before (announce only the thresholds above it).
-- KEYS: generation. ARGV: 1 generation, then per line: hash key, instance, threshold
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return {'generation', g or ''} end
local res = {'ok'}
for i = 2, #ARGV, 3 do
  local key, field, t = ARGV[i], 'a:' .. ARGV[i + 1], tonumber(ARGV[i + 2])
  local old = tonumber(redis.call('HGET', key, field) or '0')
  if t > old then redis.call('HSET', key, field, ARGV[i + 2]) end
  res[#res + 1] = I(old)
end
return res
