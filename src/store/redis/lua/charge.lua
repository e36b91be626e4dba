-- KEYS: 1 record, 2 global window, 3 tool window, 4 recent charges (nonces by time), 5 stats,
--       6 tool-window set, 7 recent charges' details by nonce
-- ARGV: 1 price, 2 tool, 3 client ip (32 hex digits, '' unknown), 4 global limit, 5 tool limit,
--       6..9 global quota (daily calls, monthly calls, daily credits, monthly credits),
--       10 has global quota, 11 shadow, 12 time override ('' = server time), 13 nonce,
--       14 checks present ('r' rate limits, 'q' quotas, 'c' credits; absent = all)
local rec = KEYS[1]
local checks = ARGV[14] or 'rqc'
local do_rate = string.find(checks, 'r', 1, true) ~= nil
local do_quota = string.find(checks, 'q', 1, true) ~= nil
local do_credits = string.find(checks, 'c', 1, true) ~= nil
-- Without billing the call costs nothing; without rate limiting no window applies.
local price = do_credits and tonumber(ARGV[1]) or 0
local tool = ARGV[2]
local ip = ARGV[3]
local glimit = do_rate and tonumber(ARGV[4]) or 0
local tlimit = do_rate and tonumber(ARGV[5]) or 0
local shadow = ARGV[11] == '1'
local now = now_ms(ARGV[12])

if redis.call('EXISTS', rec) == 0 then return {2} end
local f = redis.call('HMGET', rec, 'active', 'credits', 'spent', 'calls', 'limit', 'exp', 'xn',
  'allow', 'deny', 'ips', 'quota', 'qd', 'qdc', 'qdcr', 'qm', 'qmc', 'qmcr', 'n', 'm', 'kid')
local active = f[1] == '1'
local credits, spent, calls, limit = num(f[2]), num(f[3]), num(f[4]), num(f[5])
local exp = f[6]
local day = math.floor(now / 86400000)
local month = month_of(now)
local qd, qdc, qdcr, qm, qmc, qmcr = num(f[12]), num(f[13]), num(f[14]), num(f[15]), num(f[16]), num(f[17])
if qd ~= day then qd, qdc, qdcr = day, 0, 0 end
if qm ~= month then qm, qmc, qmcr = month, 0, 0 end

local quota = nil
if f[11] and f[11] ~= '' then
  quota = cjson.decode(f[11])
elseif ARGV[10] == '1' then
  quota = { dailyCallLimit = tonumber(ARGV[6]), monthlyCallLimit = tonumber(ARGV[7]),
            dailyCreditLimit = tonumber(ARGV[8]), monthlyCreditLimit = tonumber(ARGV[9]) }
end

local function snapshot(code, reason, retry, newly, charged, rl, rr, rs)
  return {code, reason, retry, credits, spent, calls, limit, exp or '', f[18] or '', f[19] or '', f[11] or '',
          qd, qdc, qdcr, qm, qmc, qmcr, rl, rr, rs, newly, charged, now, f[20] or ''}
end

if not active then return snapshot(1, 'invalid_api_key', 0, 0, 0, -1, 0, 0) end
if exp and exp ~= '' and now >= tonumber(exp) then
  local newly = 0
  if f[7] ~= '1' then
    newly = 1
    redis.call('HSET', rec, 'xn', '1')
  end
  return snapshot(1, 'api_key_expired', 0, newly, 0, -1, 0, 0)
end

-- IP allowlist: entries are {32 hex digits of the IPv6 (or IPv4-mapped) network, prefix}.
if f[10] and f[10] ~= '' and f[10] ~= '[]' then
  local ok = false
  if ip ~= '' then
    for _, net in ipairs(cjson.decode(f[10])) do
      local hex, plen = net[1], net[2]
      local full = math.floor(plen / 4)
      if string.sub(ip, 1, full) == string.sub(hex, 1, full) then
        local rem = plen % 4
        if rem == 0 then ok = true break end
        local mask = ({8, 12, 14})[rem]
        local a = tonumber(string.sub(ip, full + 1, full + 1), 16)
        local b = tonumber(string.sub(hex, full + 1, full + 1), 16)
        if bit.band(a, mask) == bit.band(b, mask) then ok = true break end
      end
    end
  end
  if not ok then return snapshot(1, 'ip_not_allowed', 0, 0, 0, -1, 0, 0) end
end

local function listed(json, name)
  if not json or json == '' or json == '[]' then return false end
  for _, t in ipairs(cjson.decode(json)) do
    if t == name then return true end
  end
  return false
end
if f[8] and f[8] ~= '' and f[8] ~= '[]' and not listed(f[8], tool) then
  return snapshot(1, 'tool_not_allowed', 0, 0, 0, -1, 0, 0)
end
if listed(f[9], tool) then return snapshot(1, 'tool_denied', 0, 0, 0, -1, 0, 0) end

-- Rate windows, credits, spending limit, quotas: the first failure is the reason; in shadow
-- mode every check still runs and nothing is written.
local reason, retry = '', 0
local function window(key, lim)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - MIN)
  local n = redis.call('ZCARD', key)
  if n >= lim then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local r = math.ceil((tonumber(oldest[2]) + MIN - now) / 1000)
    if r < 1 then r = 1 end
    return false, r
  end
  return true, 0
end
if glimit > 0 then
  local ok, r = window(KEYS[2], glimit)
  if not ok and reason == '' then reason, retry = 'rate_limited', r end
end
if tlimit > 0 then
  local ok, r = window(KEYS[3], tlimit)
  if not ok and reason == '' then reason, retry = 'tool_rate_limited', r end
end
if do_credits and reason == '' and credits < price then reason = 'insufficient_credits' end
if do_credits and reason == '' and limit > 0 and spent + price > limit then reason = 'spending_limit_exceeded' end
if do_quota and reason == '' and quota then
  local function cap(v) return v and v > 0 end
  if cap(quota.dailyCallLimit) and qdc >= quota.dailyCallLimit then reason = 'daily_call_quota_exceeded'
  elseif cap(quota.monthlyCallLimit) and qmc >= quota.monthlyCallLimit then reason = 'monthly_call_quota_exceeded'
  elseif cap(quota.dailyCreditLimit) and qdcr + price > quota.dailyCreditLimit then reason = 'daily_credit_quota_exceeded'
  elseif cap(quota.monthlyCreditLimit) and qmcr + price > quota.monthlyCreditLimit then reason = 'monthly_credit_quota_exceeded'
  end
end

local charged = 0
if reason == '' and not shadow then
  -- A receipt when something can be undone: billing's totals or the quota counters.
  if do_credits or do_quota then charged = 1 end
  local seq = redis.call('HINCRBY', rec, 'seq', 1)
  if glimit > 0 then
    redis.call('ZADD', KEYS[2], now, 'g' .. seq)
    redis.call('PEXPIRE', KEYS[2], MIN + 1000)
  end
  if tlimit > 0 then
    redis.call('ZADD', KEYS[3], now, 't' .. seq)
    redis.call('PEXPIRE', KEYS[3], MIN + 1000)
    redis.call('SADD', KEYS[6], tool)
  end
  -- Each check counts its own: billing the balance and the key's totals, quotas their counters.
  if do_credits then
    credits = credits - price
    spent = spent + price
    calls = calls + 1
  end
  if do_quota then
    qdc, qdcr, qmc, qmcr = qdc + 1, qdcr + price, qmc + 1, qmcr + price
  end
  redis.call('HSET', rec, 'credits', credits, 'spent', spent, 'calls', calls, 'lu', now,
    'qd', qd, 'qdc', qdc, 'qdcr', qdcr, 'qm', qm, 'qmc', qmc, 'qmcr', qmcr)
  -- '0 - x', not '-x': Lua writes a negated zero as '-0', which HINCRBY refuses.
  if price > 0 then redis.call('HINCRBY', KEYS[5], 'credits', 0 - price) end
  -- Remember the charge for a day, so one whose reply was lost (or whose refund comes late)
  -- can be undone exactly. A busy key keeps its newest RECENT_KEPT; the time of the newest
  -- one let go is kept in 'cev', so a late undo can tell "never charged" from "forgotten".
  if charged == 1 then
    local counted = (do_credits and 'b' or '') .. (do_quota and 'q' or '')
    redis.call('ZADD', KEYS[4], now, ARGV[13])
    redis.call('HSET', KEYS[7], ARGV[13], price .. ':' .. qd .. ':' .. qm .. ':' .. counted)
    while redis.call('ZCARD', KEYS[4]) > RECENT_KEPT do
      local oldest = redis.call('ZPOPMIN', KEYS[4])
      redis.call('HDEL', KEYS[7], oldest[1])
      redis.call('HSET', rec, 'cev', math.max(num(redis.call('HGET', rec, 'cev')), tonumber(oldest[2])))
    end
    redis.call('PEXPIRE', KEYS[4], RECENT_MS)
    redis.call('PEXPIRE', KEYS[7], RECENT_MS)
  end
end

-- Headers report the tool's window when it has one, else the global one.
local rl, rr, rs = -1, 0, 0
local wkey, wlim = nil, 0
if tlimit > 0 then wkey, wlim = KEYS[3], tlimit elseif glimit > 0 then wkey, wlim = KEYS[2], glimit end
if wkey then
  local n = redis.call('ZCARD', wkey)
  rl, rr = wlim, math.max(wlim - n, 0)
  local oldest = redis.call('ZRANGE', wkey, 0, 0, 'WITHSCORES')
  if oldest[2] then rs = math.max(math.ceil((tonumber(oldest[2]) + MIN - now) / 1000), 0) end
end
local code = 0
if reason ~= '' then code = 1 end
return snapshot(code, reason, retry, 0, charged, rl, rr, rs)
