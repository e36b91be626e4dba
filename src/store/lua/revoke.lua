-- KEYS: 1 record, 2 stats
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'active') == '1' then
  redis.call('HSET', KEYS[1], 'active', '0')
  redis.call('HINCRBY', KEYS[2], 'active', -1)
  redis.call('HINCRBY', KEYS[2], 'credits', -num(redis.call('HGET', KEYS[1], 'credits')))
end
return 1
