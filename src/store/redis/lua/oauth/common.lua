-- Shared by the OAuth scripts. ARGV[1] is always the key prefix; names are built from it
-- (as the tag index does), so on Redis Cluster a deployment lives in one slot.
local P = ARGV[1]
local function k(...) return P .. 'oauth:' .. table.concat({...}, ':') end

-- Milliseconds from now to `until`, at least 1 (PX refuses 0).
local function ttl(until_ms, now)
  return math.max(1, math.floor(tonumber(until_ms) - now))
end

-- Makes sure `key` lives at least `ms` more milliseconds (lists of grants live as long as
-- the longest grant in them).
local function extend(key, ms)
  local left = redis.call('PTTL', key)
  if left >= 0 and left < ms then redis.call('PEXPIRE', key, ms) end
  if left == -1 then redis.call('PEXPIRE', key, ms) end
end

-- A client left without grants may be evicted again when registrations reach the bound.
local function maybe_unused(client)
  if redis.call('SCARD', k('byclient', client)) == 0 then
    local created = redis.call('ZSCORE', k('clients'), client)
    if created then redis.call('ZADD', k('unused'), created, client) end
  end
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
  redis.call('DEL', g)
  if f[5] then
    redis.call('SREM', k('byclient', f[5]), fam)
    maybe_unused(f[5])
  end
end
