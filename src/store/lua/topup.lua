-- KEYS: 1 record, 2 stats; ARGV: 1 credits to add, 2 largest balance allowed
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local credits = num(redis.call('HGET', KEYS[1], 'credits'))
local add = tonumber(ARGV[1])
if credits + add > tonumber(ARGV[2]) then return -2 end
redis.call('HSET', KEYS[1], 'credits', credits + add)
if redis.call('HGET', KEYS[1], 'active') == '1' then redis.call('HINCRBY', KEYS[2], 'credits', add) end
return 1
