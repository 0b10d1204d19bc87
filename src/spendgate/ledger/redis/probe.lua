-- spendgate redis ledger: script version 2, key layout 1
-- probe: check_writable's real write (a counter), through the generation check like every write.
-- KEYS: generation, probe counter. ARGV: 1 generation
local g = redis.call('GET', KEYS[1])
if g ~= ARGV[1] then return {'generation', g or ''} end
return {'ok', I(redis.call('INCR', KEYS[2]))}
