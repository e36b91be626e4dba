-- Compare-and-set of a key's policy fields. KEYS: 1 record
-- ARGV: 1 expected policy version, then field/value pairs
-- Returns -1 unknown key, -2 revoked key, 0 changed since read (retry), 1 done.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], 'active') ~= '1' then return -2 end
if num(redis.call('HGET', KEYS[1], 'pver')) ~= tonumber(ARGV[1]) then return 0 end
local pairs_ = {}
for i = 2, #ARGV do table.insert(pairs_, ARGV[i]) end
redis.call('HSET', KEYS[1], unpack(pairs_))
redis.call('HINCRBY', KEYS[1], 'pver', 1)
return 1
