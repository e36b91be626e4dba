-- ARGV: prefix, token digest, client id. 0 when the token is another client's.
local tok = k('tok', ARGV[2])
local t = redis.call('GET', tok)
if not t then return 1 end
local fam = string.sub(t, 2)
local owner = redis.call('HGET', k('grant', fam), 'client')
if owner and owner ~= ARGV[3] then return 0 end
if string.sub(t, 1, 1) == 'r' then end_grant(fam) else redis.call('DEL', tok) end
return 1
