-- claim: ARGV[3] fingerprint (16 bytes), ARGV[4] reference time, ARGV[5] timeout duration or
-- '', ARGV[6] expiration or ''.
-- Returns {1, attempt, token} when this call now owns the record, or
-- {0, now, {field, value, ...}} with the record as it stands.
local token = clock[1] .. '.' .. clock[2]
local timeout = nil
if ARGV[5] ~= '' then
  timeout = now + tonumber(ARGV[5])
end

if redis.call('EXISTS', key) == 0 then
  local fields = {'status', 'running', 'fp', ARGV[3], 'ref', ARGV[4], 'start', int(now),
    'att', '1', 'errs', '0', 'tok', token}
  if timeout then
    table.insert(fields, 'timeout')
    table.insert(fields, int(timeout))
  end
  local exp = nil
  if ARGV[6] ~= '' then
    exp = tonumber(ARGV[6])
    table.insert(fields, 'exp')
    table.insert(fields, ARGV[6])
  end
  redis.call('HSET', key, unpack(fields))
  retain(exp, true, timeout)
  return {1, 1, token}
end

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
  return {0, int(now), redis.call('HGETALL', key)}
end

attempt = attempt + 1
redis.call('HSET', key, 'status', 'running', 'start', int(now), 'att', int(attempt),
  'tok', token)
if timeout then
  redis.call('HSET', key, 'timeout', int(timeout))
  redis.call('HDEL', key, 'res', 'err', 'fin')
else
  redis.call('HDEL', key, 'timeout', 'res', 'err', 'fin')
end
retain(exp, true, timeout)
return {1, attempt, token}
