-- KEYS: 1 record, 2 recent charges, 3 stats
-- ARGV: 1 price, 2 day, 3 month, 4 nonce, 5 only if still recent ('1' = compensation)
local rec = KEYS[1]
local price = tonumber(ARGV[1])
if redis.call('EXISTS', rec) == 0 then return -1 end
local found = false
local member = nil
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(m, 1, string.len(ARGV[4]) + 1) == ARGV[4] .. ':' then member = m break end
end
if member then
  redis.call('ZREM', KEYS[2], member)
  found = true
end
-- Only a charge on record is undone, and only once: a second refund of the same receipt,
-- or one for a charge that never happened, finds nothing.
if not found then return 0 end
if ARGV[5] == '1' then
  -- Compensation for a charge whose reply was lost: the record says what was charged.
  local parts = {}
  for p in string.gmatch(member, '[^:]+') do table.insert(parts, p) end
  price = tonumber(parts[2])
  ARGV[2], ARGV[3] = parts[3], parts[4]
end
local f = redis.call('HMGET', rec, 'active', 'credits', 'spent', 'calls', 'qd', 'qdc', 'qdcr', 'qm', 'qmc', 'qmcr')
local spent = math.max(num(f[3]) - price, 0)
local calls = math.max(num(f[4]) - 1, 0)
redis.call('HSET', rec, 'credits', math.min(num(f[2]) + price, 9007199254740991), 'spent', spent, 'calls', calls)
if f[5] == ARGV[2] then
  redis.call('HSET', rec, 'qdc', math.max(num(f[6]) - 1, 0), 'qdcr', math.max(num(f[7]) - price, 0))
end
if f[8] == ARGV[3] then
  redis.call('HSET', rec, 'qmc', math.max(num(f[9]) - 1, 0), 'qmcr', math.max(num(f[10]) - price, 0))
end
if f[1] == '1' then redis.call('HINCRBY', KEYS[3], 'credits', price) end
return 1
