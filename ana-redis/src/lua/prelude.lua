-- Shared by every ana-redis script. KEYS[1] is the record's hash; ARGV[1] is the retention
-- after the expiration and ARGV[2] the retention of a record without expiration, both in
-- microseconds. Times are integer microseconds since the Unix epoch, on the server's clock.
local key = KEYS[1]
local after_expiration = tonumber(ARGV[1])
local without_expiration = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- An integer as a decimal string, never in exponent form.
local function int(n)
  return string.format('%.0f', n)
end

-- A stored integer field: nil when absent; `corrupt` is raised when present but not a number.
local corrupt = false
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

-- Sets the record's TTL: its expiration plus the retention after it, or, without an
-- expiration, the retention from now. A Running record is also kept until its lock deadline
-- (or a full retention when it has none), so it never vanishes under its holder.
local function retain(exp, running, timeout)
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
  redis.call('PEXPIREAT', key, int(math.floor(at / 1000)))
end
