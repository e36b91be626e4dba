-- ARGV: prefix, client id, client JSON, created ms, most clients
local n = redis.call('ZCARD', k('clients'))
if n >= tonumber(ARGV[5]) then
  -- Registration is open: at the bound the oldest never-granted client makes room.
  local victim = redis.call('ZRANGE', k('unused'), 0, 0)[1]
  if not victim then return 0 end
  redis.call('DEL', k('client', victim), k('byclient', victim))
  redis.call('ZREM', k('clients'), victim)
  redis.call('ZREM', k('unused'), victim)
end
redis.call('HSET', k('client', ARGV[2]), 'json', ARGV[3], 'revoked', '0')
redis.call('ZADD', k('clients'), ARGV[4], ARGV[2])
redis.call('ZADD', k('unused'), ARGV[4], ARGV[2])
return 1
