-- ARGV: prefix, code digest, code expires ms, family, client, key id, key digest, scope,
-- created ms, access digest, access expires, refresh digest, refresh expires, now ms,
-- most grants per account
local now = tonumber(ARGV[14])
local c = k('client', ARGV[5])
local revoked = redis.call('HGET', c, 'revoked')
if not revoked or revoked == '1' then return 0 end
local fam = ARGV[4]
local g = k('grant', fam)
redis.call('HSET', g, 'client', ARGV[5], 'kid', ARGV[6], 'key', ARGV[7], 'scope', ARGV[8],
  'created', ARGV[9], 'access', ARGV[10], 'aexp', ARGV[11], 'refresh', ARGV[12],
  'rexp', ARGV[13], 'spent', '')
redis.call('PEXPIRE', g, ttl(ARGV[13], now))
redis.call('SET', k('tok', ARGV[10]), 'a' .. fam, 'PX', ttl(ARGV[11], now))
redis.call('SET', k('tok', ARGV[12]), 'r' .. fam, 'PX', ttl(ARGV[13], now))
redis.call('SET', k('used', ARGV[2]), fam, 'PX', ttl(ARGV[3], now))
redis.call('ZREM', k('unused'), ARGV[5])
redis.call('SADD', k('byclient', ARGV[5]), fam)
local acct = k('account', ARGV[6])
redis.call('ZADD', acct, ARGV[9], fam)
-- Grants that expired on their own leave their id behind: drop those first.
for _, old in ipairs(redis.call('ZRANGE', acct, 0, -1)) do
  if redis.call('EXISTS', k('grant', old)) == 0 then
    redis.call('ZREM', acct, old)
    redis.call('SREM', k('byclient', ARGV[5]), old)
  end
end
while redis.call('ZCARD', acct) > tonumber(ARGV[15]) do
  end_grant(redis.call('ZRANGE', acct, 0, 0)[1])
end
return 1
