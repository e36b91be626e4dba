-- Shared by the OAuth scripts. ARGV[1] is always the key prefix; names are built from it
-- (as the tag index does), so on Redis Cluster a deployment lives in one slot.
local P = ARGV[1]
local function k(...) return P .. 'oauth:' .. table.concat({...}, ':') end

-- Milliseconds from now to `until`, at least 1 (PX refuses 0).
local function ttl(until_ms, now)
  return math.max(1, math.floor(tonumber(until_ms) - now))
end

-- Ends a grant: its tokens, the spent refresh tokens it remembers, its place in the
-- account's and the client's lists.
local function end_grant(fam)
  local g = k('grant', fam)
  local f = redis.call('HMGET', g, 'access', 'refresh', 'spent', 'kid', 'client')
  if f[1] then redis.call('DEL', k('tok', f[1])) end
  if f[2] then redis.call('DEL', k('tok', f[2])) end
  if f[3] then
    for s in string.gmatch(f[3], '%x+') do redis.call('DEL', k('spent', s)) end
  end
  if f[4] then redis.call('ZREM', k('account', f[4]), fam) end
  if f[5] then redis.call('SREM', k('byclient', f[5]), fam) end
  redis.call('DEL', g)
end
