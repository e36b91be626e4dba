-- KEYS: 1 record, 2 recent charges (nonces by time), 3 stats, 4 recent charges' details by nonce
-- ARGV: 1 price, 2 day, 3 month, 4 nonce, 5 only if still recent ('1' = compensation),
--       6 when the charge was made or tried (ms), 7 time override ('' = server time),
--       8 what the charge counted ('b' billing's totals, 'q' quota counters; absent = both)
-- Returns 1 undone, 0 nothing to undo, -1 no such key, -2 not on record and too old to tell.
local rec = KEYS[1]
local price = tonumber(ARGV[1])
if redis.call('EXISTS', rec) == 0 then return -1 end
-- Found by nonce in constant time, whatever the number of charges remembered.
local member = redis.call('HGET', KEYS[4], ARGV[4])
local found = member ~= false and member ~= nil
local parts = {}
-- What to undo: the receipt's part ('b', 'q'), or for a lost reply all the record holds.
local undo = ARGV[8] or 'bq'
if found then
  for p in string.gmatch(member, '[^:]+') do table.insert(parts, p) end
  -- Records made before the checks were split counted both.
  local recorded = parts[4] or 'bq'
  if ARGV[5] == '1' then undo = recorded end
  -- Only what the record still holds is undone, once; a part not undone stays on record
  -- for its own refund.
  local take, rest = '', ''
  for _, c in ipairs({'b', 'q'}) do
    local has = string.find(recorded, c, 1, true) ~= nil
    if has and string.find(undo, c, 1, true) then take = take .. c elseif has then rest = rest .. c end
  end
  undo = take
  if rest == '' then
    redis.call('HDEL', KEYS[4], ARGV[4])
    redis.call('ZREM', KEYS[2], ARGV[4])
  else
    redis.call('HSET', KEYS[4], ARGV[4], parts[1] .. ':' .. parts[2] .. ':' .. parts[3] .. ':' .. rest)
  end
  if undo == '' then return 0 end
end
-- Only a charge on record is undone, and only once: a second refund of the same receipt,
-- or one for a charge that never happened, finds nothing. A charge made before the newest
-- one forgotten (a busy key), or a day ago, may have been forgotten: that is told apart.
if not found then
  local at = tonumber(ARGV[6]) or 0
  local forgotten = at - SKEW_MS <= num(redis.call('HGET', rec, 'cev'))
    or now_ms(ARGV[7]) - at >= RECENT_MS - SKEW_MS
  if not forgotten then return 0 end
  -- A receipt proves the charge happened: refund it from the receipt. A lost reply proves
  -- nothing: report it, so it is neither given back nor dropped silently.
  if ARGV[5] == '1' then return -2 end
end
if ARGV[5] == '1' then
  -- Compensation for a charge whose reply was lost: the record says what was charged.
  price = tonumber(parts[1])
  ARGV[2], ARGV[3] = parts[2], parts[3]
end
local billed = string.find(undo, 'b', 1, true) ~= nil
local quota = string.find(undo, 'q', 1, true) ~= nil
local f = redis.call('HMGET', rec, 'active', 'credits', 'spent', 'calls', 'qd', 'qdc', 'qdcr', 'qm', 'qmc', 'qmcr')
local credits = num(f[2])
if billed then
  local spent = math.max(num(f[3]) - price, 0)
  local calls = math.max(num(f[4]) - 1, 0)
  credits = math.min(credits + price, 9007199254740991)
  redis.call('HSET', rec, 'credits', credits, 'spent', spent, 'calls', calls)
end
if quota and f[5] == ARGV[2] then
  redis.call('HSET', rec, 'qdc', math.max(num(f[6]) - 1, 0), 'qdcr', math.max(num(f[7]) - price, 0))
end
if quota and f[8] == ARGV[3] then
  redis.call('HSET', rec, 'qmc', math.max(num(f[9]) - 1, 0), 'qmcr', math.max(num(f[10]) - price, 0))
end
if f[1] == '1' then redis.call('HINCRBY', KEYS[3], 'credits', credits - num(f[2])) end
return 1
