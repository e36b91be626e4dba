-- KEYS: 1 record, 2 stats; ARGV: 1 credits to add, 2 largest balance allowed
-- Returns -1 unknown key, -2 balance would exceed the bound, -3 revoked key, 1 done.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'active') ~= '1' then return -3 end
local credits = num(redis.call('HGET', KEYS[1], 'credits'))
local add = tonumber(ARGV[1])
if credits + add > tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[1], 'credits', credits + add)
redis.call('HINCRBY', KEYS[2], 'credits', add)
return 1
