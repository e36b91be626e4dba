-- ARGV: prefix, key id
local acct = k('account', ARGV[2])
for _, fam in ipairs(redis.call('ZRANGE', acct, 0, -1)) do end_grant(fam) end
redis.call('DEL', acct)
return 1
