-- ARGV: prefix, client id
local c = k('client', ARGV[2])
if redis.call('EXISTS', c) == 0 then return 0 end
redis.call('HSET', c, 'revoked', '1')
for _, fam in ipairs(redis.call('SMEMBERS', k('byclient', ARGV[2]))) do end_grant(fam) end
redis.call('DEL', k('byclient', ARGV[2]))
-- Revoked, it holds nothing: it may make room for a new client.
redis.call('ZADD', k('unused'), redis.call('ZSCORE', k('clients'), ARGV[2]) or 0, ARGV[2])
return 1
