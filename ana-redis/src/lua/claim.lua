-- claim: ARGV[3] fingerprint (16 bytes), ARGV[4] reference time, ARGV[5] timeout duration or
-- '', ARGV[6] expiration or ''.
-- Returns {1, attempt, claim, previous status ('' for a new record)} when this call now owns
-- the record, or
-- {0, now, {field, value, ...}} with the record as it stands.
-- The claim number (the lease's, stored as `tok`) is the server's time in microseconds.
-- The first read (HGETALL) tells an absent record and is the answer when the record stands.
local token = int(now)
local timeout = nil
if ARGV[5] ~= '' then
  timeout = now + tonumber(ARGV[5])
end
local start = int(now)
local hash = redis.call('HGETALL', key)

if #hash == 0 then
  local fields = {'status', 'running', 'fp', ARGV[3], 'ref', ARGV[4], 'start', start,
    'att', '1', 'errs', '0', 'tok', token}
  if timeout then
    fields[#fields + 1] = 'timeout'
    fields[#fields + 1] = int(timeout)
  end
  local exp = nil
  if ARGV[6] ~= '' then
    exp = tonumber(ARGV[6])
    fields[#fields + 1] = 'exp'
    fields[#fields + 1] = ARGV[6]
  end
  redis.call('HSET', key, unpack(fields))
  retain(exp, true, timeout)
  return {1, 1, now, ''}
end

-- The fields the decision needs, by name (cheaper than walking the hash in Lua).
local f = redis.call('HMGET', key, 'status', 'fp', 'timeout', 'exp', 'att')
local status = f[1]
local held_until = num(f[3])
local exp = num(f[4])
local attempt = num(f[5]) or 0
-- TrackedOperation::is_claimable_at, on the server's clock.
local claimable = not corrupt
  and f[2] == ARGV[3]
  and not (exp and now > exp)
  and (status == 'ready' or status == 'failed'
    or (status == 'running' and held_until ~= nil and now >= held_until))
if not claimable then
  return {0, start, hash}
end

attempt = attempt + 1
if timeout then
  redis.call('HSET', key, 'status', 'running', 'start', start, 'att', int(attempt),
    'tok', token, 'timeout', int(timeout))
  redis.call('HDEL', key, 'res', 'err', 'fail', 'fin')
else
  redis.call('HSET', key, 'status', 'running', 'start', start, 'att', int(attempt),
    'tok', token)
  redis.call('HDEL', key, 'timeout', 'res', 'err', 'fail', 'fin')
end
retain(exp, true, timeout)
return {1, attempt, now, status}
