-- KEYS: 1 old record, 2 new record, 3 key index, 4 old global window, 5 new global window,
--       6 old recent, 7 new recent, 8 old tool-window set, 9 new tool-window set,
--       10 old moved pointer (lets refunds of calls in flight find the account),
--       11 old recent-charge details, 12 new recent-charge details, 13 key ids
-- ARGV: 1 old hex, 2 new hex, 3 new masked key, 4 old tool-window prefix, 5 new tool-window prefix,
--       6 the key id derived from the old digest (for a record written before ids existed),
--       7 tag set prefix
-- Returns 0 unknown key, -2 revoked key, -1 new key taken, 1 done.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'active') ~= '1' then return -2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local kid = redis.call('HGET', KEYS[1], 'kid')
if not kid or kid == '' then kid = ARGV[6] end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'm', ARGV[3], 'kid', kid)
-- The account keeps its id; the id and its tags now point at the new key.
redis.call('HSET', KEYS[13], kid, ARGV[2])
local tags = redis.call('HGET', KEYS[2], 'tags')
if tags and tags ~= '' then
  for name, value in pairs(cjson.decode(tags)) do
    local set = ARGV[7] .. #name .. ':' .. name .. '=' .. value
    redis.call('SREM', set, ARGV[1])
    redis.call('SADD', set, ARGV[2])
  end
end
for _, i in ipairs({4, 6, 11}) do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('RENAME', KEYS[i], KEYS[i + 1]) end
end
if redis.call('EXISTS', KEYS[8]) == 1 then
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[8])) do
    local from = ARGV[4] .. t
    if redis.call('EXISTS', from) == 1 then redis.call('RENAME', from, ARGV[5] .. t) end
  end
  redis.call('RENAME', KEYS[8], KEYS[9])
end
-- Kept as long as charges are remembered, so a refund of any call still on record finds it.
redis.call('SET', KEYS[10], ARGV[2], 'PX', RECENT_MS)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
return 1
