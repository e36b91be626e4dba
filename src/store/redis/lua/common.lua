-- Shared helpers, prepended to every script.
local MIN = 60000
-- How long, and how many, charges are remembered per key for undoing them later.
local RECENT_MS = 86400000
local RECENT_KEPT = 10000
-- Clock skew allowed between a gateway and Redis when judging a charge's age.
local SKEW_MS = 5000

local function num(v)
  if v == false or v == nil or v == '' then return 0 end
  return tonumber(v) or 0
end

-- UTC month number (year * 12 + month0) of a millisecond time, as the Rust side computes it.
local function month_of(ms)
  local z = math.floor(ms / 86400000) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m
  if mp < 10 then m = mp + 3 else m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y * 12 + (m - 1)
end

local function now_ms(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
