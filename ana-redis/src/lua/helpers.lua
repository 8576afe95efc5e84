-- The functions the scripts share, after prelude.lua. Each one is a closure made on every
-- run of a script that reaches its definition: finish.lua runs its common path (a complete)
-- before these.

local after_expiration = tonumber(ARGV[1])
local without_expiration = tonumber(ARGV[2])

-- An integer as a decimal string, never in exponent form.
local function int(n)
  return string.format('%.0f', n)
end

-- Set when a stored number is present but malformed.
local corrupt = false

-- A hash field of the layout of earlier versions: nil when absent.
local function num(v)
  if not v then
    return nil
  end
  local n = tonumber(v)
  if not n then
    corrupt = true
  end
  return n
end

-- Whether `v` is a record of the string layout.
local function is_record(v)
  return #v >= HEADER and string.sub(v, 1, 1) == MARKER
end

-- The time at `at` of the string `v`: nil when absent.
local function time_at(v, at)
  local field = string.sub(v, at, at + 16)
  if field == NO_TIME then
    return nil
  end
  local n = tonumber(field)
  if not n then
    corrupt = true
  end
  return n
end

-- A time as the header holds it.
local function time_field(n)
  if n == nil then
    return NO_TIME
  end
  return string.format('%017.0f', n)
end

-- The record `v` Failed with `message` and `kind`: the attempt's fields kept, no finish time,
-- one more failed attempt.
local function failed(v, message, kind)
  local errors = tonumber(string.sub(v, AT_ERROR_COUNT, AT_ERROR_COUNT + 9))
  if not errors then
    corrupt = true
    errors = 0
  end
  return MARKER .. FAILED .. '1' .. string.sub(v, AT_FINGERPRINT, AT_FINISHED_AT - 1)
    .. NO_TIME .. string.format('%010.0f', errors + 1) .. string.format('%02d', #kind)
    .. kind .. message
end

-- The record's TTL, as an absolute time in milliseconds: its expiration plus the retention
-- after it, or, without an expiration, the retention from now. A Running record is also kept
-- until its lock deadline (or a full retention when it has none), so it never vanishes under
-- its holder.
local function retain_at(exp, running, timeout)
  local at
  if exp then
    at = exp + after_expiration
  else
    at = now + without_expiration
  end
  if running then
    local hold = timeout or (now + without_expiration)
    if hold > at then
      at = hold
    end
  end
  -- A time in the past deletes the record at once, as Redis does; PXAT needs it positive.
  return int(math.max(1, math.floor(at / 1000)))
end

-- Writes the string `v` with its TTL.
local function store(v, exp, running, timeout)
  redis.call('SET', key, v, 'PXAT', retain_at(exp, running, timeout))
end

-- Sets the TTL of a record of the hash layout.
local function retain(exp, running, timeout)
  redis.call('PEXPIREAT', key, retain_at(exp, running, timeout))
end
