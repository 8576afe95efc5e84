-- time_out: ARGV[3] the error message and ARGV[4] the failure kind to store.
-- Marks the record Failed when it is Running past its timeout (on this server's clock, checked
-- here again: the scan that found it read it earlier). Returns 1 when it did, 0 otherwise.
local kind = redis.call('TYPE', key)['ok']

if kind == 'string' then
  local v = redis.call('GET', key)
  if not is_record(v) or string.sub(v, AT_STATUS, AT_STATUS) ~= RUNNING then
    return 0
  end
  local held_until = time_at(v, AT_TIMEOUT)
  local exp = time_at(v, AT_EXPIRATION)
  if corrupt or held_until == nil or now < held_until then
    return 0
  end
  local record = failed(v, ARGV[3], ARGV[4])
  if corrupt then
    return 0
  end
  -- Finishing point: timed out.
  store(record, exp, false, nil)
  return 1
end

if kind ~= 'hash' then
  return 0
end
-- A record of the hash layout of earlier versions: updated in place, so that they still read
-- it.
local f = redis.call('HMGET', key, 'status', 'timeout', 'exp')
if f[1] ~= 'running' then
  return 0
end
local held_until = num(f[2])
local exp = num(f[3])
if corrupt or held_until == nil or now < held_until then
  return 0
end
-- Finishing point: timed out (a record of the hash layout).
redis.call('HSET', key, 'status', 'failed', 'err', ARGV[3], 'fail', ARGV[4])
redis.call('HDEL', key, 'res', 'fin')
redis.call('HINCRBY', key, 'errs', 1)
retain(exp, false, nil)
return 1
