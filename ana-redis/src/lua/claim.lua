-- claim, when `SET … NX GET` found a record that may be taken over, or a value that is not a
-- string (a record of the hash layout of earlier versions): ARGV[3] fingerprint (32 hex
-- digits), ARGV[4] reference time, ARGV[5] timeout duration or '', ARGV[6] expiration or ''.
-- Returns {1, attempt, claim, previous status ('' for a new record)} when this call now owns
-- the record, or {0, now, record} with the record as it stands: its string, or the hash's
-- HGETALL. A record taken over is written in the string layout; its claim number is the
-- server's time in microseconds.
local STATUS_NAMES = {['0'] = 'ready', ['1'] = 'running', ['2'] = 'finished', ['3'] = 'failed'}
local timeout = nil
if ARGV[5] ~= '' then
  timeout = now + tonumber(ARGV[5])
end

-- The attempt `attempt` of a Running record.
local function running(fingerprint, attempt, reference_time, exp, errors)
  return MARKER .. RUNNING .. '0' .. fingerprint .. string.format('%020.0f', attempt)
    .. string.format('%020.0f', now) .. reference_time .. time_field(now)
    .. time_field(timeout) .. time_field(exp) .. NO_TIME .. errors .. '00'
end

local kind = redis.call('TYPE', key)['ok']

if kind == 'none' then
  -- Gone since the SET: created here.
  local exp = nil
  if ARGV[6] ~= '' then
    exp = tonumber(ARGV[6])
  end
  store(running(ARGV[3], 1, time_field(tonumber(ARGV[4])), exp, string.format('%010d', 0)),
    exp, true, timeout)
  return {1, 1, now, ''}
end

if kind == 'string' then
  local v = redis.call('GET', key)
  if not is_record(v) then
    return {0, int(now), v}
  end
  local status = string.sub(v, AT_STATUS, AT_STATUS)
  local held_until = time_at(v, AT_TIMEOUT)
  local exp = time_at(v, AT_EXPIRATION)
  local attempt = tonumber(string.sub(v, AT_ATTEMPT, AT_ATTEMPT + 19))
  -- TrackedOperation::is_claimable_at, on the server's clock.
  local claimable = not corrupt and attempt ~= nil
    and string.sub(v, AT_FINGERPRINT, AT_ATTEMPT - 1) == ARGV[3]
    and not (exp and now > exp)
    and (status == READY or status == FAILED
      or (status == RUNNING and held_until ~= nil and now >= held_until))
  if not claimable then
    return {0, int(now), v}
  end
  attempt = attempt + 1
  store(running(ARGV[3], attempt, string.sub(v, AT_REFERENCE_TIME, AT_STARTED_AT - 1), exp,
    string.sub(v, AT_ERROR_COUNT, AT_ERROR_COUNT + 9)), exp, true, timeout)
  return {1, attempt, now, STATUS_NAMES[status]}
end

if kind == 'hash' then
  -- A record of the hash layout: read as before, and written in the string layout when taken
  -- over.
  local f = redis.call('HMGET', key, 'status', 'fp', 'timeout', 'exp', 'att', 'ref', 'errs')
  local status = f[1]
  local held_until = num(f[3])
  local exp = num(f[4])
  local attempt = num(f[5]) or 0
  local reference_time = num(f[6])
  local errors = num(f[7]) or 0
  local fingerprint = ''
  if f[2] then
    fingerprint = string.gsub(f[2], '.', function(c)
      return string.format('%02x', string.byte(c))
    end)
  end
  local claimable = not corrupt and reference_time ~= nil
    and fingerprint == ARGV[3]
    and not (exp and now > exp)
    and (status == 'ready' or status == 'failed'
      or (status == 'running' and held_until ~= nil and now >= held_until))
  if not claimable then
    return {0, int(now), redis.call('HGETALL', key)}
  end
  attempt = attempt + 1
  store(running(ARGV[3], attempt, time_field(reference_time), exp,
    string.format('%010.0f', errors)), exp, true, timeout)
  return {1, attempt, now, status}
end

return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
