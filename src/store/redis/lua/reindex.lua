-- Indexes keys written before key ids and tag sets existed, each only if its record still
-- exists (a key rotated or gone since it was listed is left alone: its record moved with its
-- indexes). KEYS: 1 key ids
-- ARGV: 1 tag set prefix, then per key: record key, digest hex, id derived from the digest
-- Returns the number of keys indexed.
local done = 0
for i = 2, #ARGV, 3 do
  local rec, hex, derived = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', rec) == 1 then
    redis.call('HSETNX', rec, 'kid', derived)
    local kid = redis.call('HGET', rec, 'kid')
    redis.call('HSETNX', KEYS[1], kid, hex)
    local tags = redis.call('HGET', rec, 'tags')
    if tags and tags ~= '' then
      for name, value in pairs(cjson.decode(tags)) do
        redis.call('SADD', ARGV[1] .. #name .. ':' .. name .. '=' .. value, hex)
      end
    end
    done = done + 1
  end
end
return done
