-- ARGV: prefix, code digest, client id
local code = k('code', ARGV[2])
local v = redis.call('GET', code)
if v then
  -- Another client's attempt leaves the code to its owner.
  if cjson.decode(v)['clientId'] ~= ARGV[3] then return {'other_client'} end
  redis.call('DEL', code)
  redis.call('ZREM', k('codes'), ARGV[2])
  return {'fresh', v}
end
local used = k('used', ARGV[2])
local fam = redis.call('GET', used)
if fam then
  local owner = redis.call('HGET', k('grant', fam), 'client')
  if owner and owner ~= ARGV[3] then return {'other_client'} end
  -- A code presented twice by its client: whoever exchanged it first loses the grant too.
  redis.call('DEL', used)
  end_grant(fam)
  return {'reused'}
end
return {'unknown'}
