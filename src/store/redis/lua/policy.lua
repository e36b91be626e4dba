-- Compare-and-set of a key's policy fields, moving the key between tag sets in the same step.
-- KEYS: 1 record
-- ARGV: 1 expected policy version, 2 digest hex, 3 number of tag sets left R, then R sets,
--       then the number of tag sets joined A, then A sets, then field/value pairs
-- Returns -1 unknown key, -2 revoked key, 0 changed since read (retry), 1 done.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'active') ~= '1' then return -2 end
if num(redis.call('HGET', KEYS[1], 'pver')) ~= tonumber(ARGV[1]) then return 0 end
local i = 3
local left = tonumber(ARGV[i])
for j = i + 1, i + left do redis.call('SREM', ARGV[j], ARGV[2]) end
i = i + left + 1
local joined = tonumber(ARGV[i])
for j = i + 1, i + joined do redis.call('SADD', ARGV[j], ARGV[2]) end
i = i + joined + 1
local pairs_ = {}
for j = i, #ARGV do table.insert(pairs_, ARGV[j]) end
redis.call('HSET', KEYS[1], unpack(pairs_))
redis.call('HINCRBY', KEYS[1], 'pver', 1)
return 1
