-- KEYS: 1 record, 2 stats
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'active') == '1' then
  redis.call('HSET', KEYS[1], 'active', '0')
  redis.call('HINCRBY', KEYS[2], 'active', -1)
  -- '0 - x', not '-x': Lua writes a negated zero as '-0', which HINCRBY refuses.
  redis.call('HINCRBY', KEYS[2], 'credits', 0 - num(redis.call('HGET', KEYS[1], 'credits')))
end
return 1
