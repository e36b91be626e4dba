-- KEYS: 1 record, 2 key index, 3 stats; ARGV: 1 digest hex, then field/value pairs
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local pairs_ = {}
for i = 2, #ARGV do table.insert(pairs_, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(pairs_))
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('HINCRBY', KEYS[3], 'total', 1)
if redis.call('HGET', KEYS[1], 'active') == '1' then
  redis.call('HINCRBY', KEYS[3], 'active', 1)
  redis.call('HINCRBY', KEYS[3], 'credits', num(redis.call('HGET', KEYS[1], 'credits')))
end
return 1
