-- KEYS: 1 payment log (sorted set: id by time credited), 2 key ids, 3 stats
-- ARGV: 1 key prefix, 2 key id, 3 credits, 4 largest balance, 5 now ms, 6 forget before ms,
-- 7.. payment ids
-- Returns {1, digest} credited, {0} already credited, {-1} unknown account, {-2} too large,
-- {-3} revoked.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[6])
for i = 7, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then return {0} end
end
local digest = redis.call('HGET', KEYS[2], ARGV[2])
if not digest then return {-1} end
local rec = ARGV[1] .. '{' .. digest .. '}'
if redis.call('EXISTS', rec) == 0 then return {-1} end
if redis.call('HGET', rec, 'active') ~= '1' then return {-3} end
local credits = num(redis.call('HGET', rec, 'credits'))
local add = tonumber(ARGV[3])
if credits + add > tonumber(ARGV[4]) then return {-2} end
redis.call('HSET', rec, 'credits', credits + add)
redis.call('HINCRBY', KEYS[3], 'credits', add)
for i = 7, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[i])
end
return {1, digest}
