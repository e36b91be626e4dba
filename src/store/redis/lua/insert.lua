-- KEYS: 1 record, 2 key index, 3 stats, 4 key ids
-- ARGV: 1 digest hex, 2 key id, 3 number of tag sets N, 4..3+N tag sets, then field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HSETNX', KEYS[4], ARGV[2], ARGV[1]) == 0 then return 0 end
local n = tonumber(ARGV[3])
for i = 4, 3 + n do redis.call('SADD', ARGV[i], ARGV[1]) end
local pairs_ = {}
for i = 4 + n, #ARGV do table.insert(pairs_, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(pairs_))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('HINCRBY', KEYS[3], 'total', 1)
if redis.call('HGET', KEYS[1], 'active') == '1' then
  redis.call('HINCRBY', KEYS[3], 'active', 1)
  redis.call('HINCRBY', KEYS[3], 'credits', num(redis.call('HGET', KEYS[1], 'credits')))
end
return 1
