-- ARGV: prefix, code digest, code expires ms, family, client, key id, key digest, scope,
-- created ms, access digest, access expires, refresh digest, refresh expires, now ms,
-- most grants per account, resource
local now = tonumber(ARGV[14])
local c = k('client', ARGV[5])
local revoked = redis.call('HGET', c, 'revoked')
if not revoked or revoked == '1' then return 0 end
local fam = ARGV[4]
local g = k('grant', fam)
local life = ttl(ARGV[13], now)
redis.call('HSET', g, 'client', ARGV[5], 'kid', ARGV[6], 'key', ARGV[7], 'scope', ARGV[8],
  'created', ARGV[9], 'access', ARGV[10], 'aexp', ARGV[11], 'refresh', ARGV[12],
  'rexp', ARGV[13], 'spent', '', 'res', ARGV[16])
redis.call('PEXPIRE', g, life)
redis.call('SET', k('tok', ARGV[10]), 'a' .. fam, 'PX', ttl(ARGV[11], now))
redis.call('SET', k('tok', ARGV[12]), 'r' .. fam, 'PX', life)
redis.call('SET', k('used', ARGV[2]), fam, 'PX', ttl(ARGV[3], now))
redis.call('ZREM', k('unused'), ARGV[5])
local byclient = k('byclient', ARGV[5])
-- Grants that expired on their own leave their id behind: a few are checked each time.
for _, old in ipairs(redis.call('SRANDMEMBER', byclient, 8)) do
  if redis.call('EXISTS', k('grant', old)) == 0 then redis.call('SREM', byclient, old) end
end
redis.call('SADD', byclient, fam)
extend(byclient, life)
local acct = k('account', ARGV[6])
for _, old in ipairs(redis.call('ZRANGE', acct, 0, -1)) do
  if redis.call('EXISTS', k('grant', old)) == 0 then redis.call('ZREM', acct, old) end
end
redis.call('ZADD', acct, ARGV[9], fam)
extend(acct, life)
while redis.call('ZCARD', acct) > tonumber(ARGV[15]) do
  end_grant(redis.call('ZRANGE', acct, 0, 0)[1])
end
return 1
