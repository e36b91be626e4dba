-- ARGV: prefix, access digest, now ms
local t = redis.call('GET', k('tok', ARGV[2]))
if not t or string.sub(t, 1, 1) ~= 'a' then return false end
local fam = string.sub(t, 2)
local f = redis.call('HMGET', k('grant', fam), 'client', 'kid', 'key', 'scope', 'created',
  'access', 'aexp', 'refresh', 'rexp', 'res')
if not f[1] or f[6] ~= ARGV[2] or tonumber(ARGV[3]) >= tonumber(f[7]) then return false end
return {fam, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10] or ''}
