-- ARGV: prefix, code digest, code JSON, expires ms, now ms, most codes
local now = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', k('codes'), '-inf', now)
if redis.call('ZCARD', k('codes')) >= tonumber(ARGV[6]) then return 0 end
redis.call('SET', k('code', ARGV[2]), ARGV[3], 'PX', ttl(ARGV[4], now))
redis.call('ZADD', k('codes'), ARGV[4], ARGV[2])
return 1
