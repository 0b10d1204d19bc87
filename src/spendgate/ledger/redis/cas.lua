-- spendgate redis ledger: script version 2, key layout 1
-- cas: set KEYS[1] to ARGV[2] ('' deletes it) only while it holds ARGV[1]; 1 if it did
-- (releasing a lock only its holder has, finishing a rebuild only the rebuilder started).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
