-- ARGV: prefix, code digest, code JSON, expires ms, now ms, most codes, key id,
-- most codes per account
local now = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', k('codes'), '-inf', now)
if redis.call('ZCARD', k('codes')) >= tonumber(ARGV[6]) then return 0 end
-- Codes issued to the account within their lifetime, taken or not.
local issued = k('issued', ARGV[7])
redis.call('ZREMRANGEBYSCORE', issued, '-inf', now)
if redis.call('ZCARD', issued) >= tonumber(ARGV[8]) then return 0 end
redis.call('ZADD', issued, ARGV[4], ARGV[2])
redis.call('PEXPIRE', issued, ttl(ARGV[4], now))
redis.call('SET', k('code', ARGV[2]), ARGV[3], 'PX', ttl(ARGV[4], now))
redis.call('ZADD', k('codes'), ARGV[4], ARGV[2])
return 1
