-- ARGV: prefix, code digest
local code = k('code', ARGV[2])
local v = redis.call('GET', code)
if v then
  redis.call('DEL', code)
  redis.call('ZREM', k('codes'), ARGV[2])
  return {'fresh', v}
end
local used = k('used', ARGV[2])
local fam = redis.call('GET', used)
if fam then
  -- A code presented twice: whoever exchanged it first loses the grant too.
  redis.call('DEL', used)
  end_grant(fam)
  return {'reused'}
end
return {'unknown'}
