-- ARGV: prefix, presented digest, client id, access digest, access expires, refresh digest,
-- refresh expires, now ms, spent tokens kept per grant
local now = tonumber(ARGV[8])
local d = ARGV[2]
local fam = redis.call('GET', k('spent', d))
if fam then
  local owner = redis.call('HGET', k('grant', fam), 'client')
  if owner and owner ~= ARGV[3] then return {'other_client'} end
  end_grant(fam)
  return {'reused'}
end
local t = redis.call('GET', k('tok', d))
if not t or string.sub(t, 1, 1) ~= 'r' then return {'unknown'} end
fam = string.sub(t, 2)
local g = k('grant', fam)
local f = redis.call('HMGET', g, 'client', 'refresh', 'rexp', 'access', 'spent')
if not f[1] or f[2] ~= d then return {'unknown'} end
if f[1] ~= ARGV[3] then return {'other_client'} end
if now >= tonumber(f[3]) then return {'expired'} end
redis.call('DEL', k('tok', d), k('tok', f[4]))
local spent = {}
for s in string.gmatch(f[5] or '', '%x+') do table.insert(spent, s) end
table.insert(spent, d)
while #spent > tonumber(ARGV[9]) do
  redis.call('DEL', k('spent', table.remove(spent, 1)))
end
redis.call('SET', k('spent', d), fam, 'PX', ttl(ARGV[7], now))
redis.call('HSET', g, 'access', ARGV[4], 'aexp', ARGV[5], 'refresh', ARGV[6], 'rexp', ARGV[7],
  'spent', table.concat(spent, ' '))
redis.call('PEXPIRE', g, ttl(ARGV[7], now))
extend(k('byclient', f[1]), ttl(ARGV[7], now))
local kid = redis.call('HGET', g, 'kid')
if kid then extend(k('account', kid), ttl(ARGV[7], now)) end
redis.call('SET', k('tok', ARGV[4]), 'a' .. fam, 'PX', ttl(ARGV[5], now))
redis.call('SET', k('tok', ARGV[6]), 'r' .. fam, 'PX', ttl(ARGV[7], now))
local out = redis.call('HMGET', g, 'client', 'kid', 'key', 'scope', 'created', 'res')
return {'ok', fam, out[1], out[2], out[3], out[4], out[5], out[6] or ''}
