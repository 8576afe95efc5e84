-- complete / fail: ARGV[3] 'complete' or 'fail', ARGV[4] attempt, ARGV[5] claim number,
-- ARGV[6] result (complete) or error message (fail), ARGV[7] '1' when complete has a result
-- and '0' when it could not be encoded (complete) or the failure kind (fail), ARGV[8] and
-- ARGV[9] the error message and failure kind stored when the record expired before the
-- attempt completed.
-- Returns 0 done, 1 superseded, 2 expired (complete only), 3 record gone, 4 record corrupt.
local f = redis.call('HMGET', key, 'status', 'att', 'tok', 'exp')
if f[1] ~= 'running' or f[2] ~= ARGV[4] or f[3] ~= ARGV[5] then
  -- This claim's own complete, run again (sent again after a connection dropped before its
  -- answer came back): done, not superseded.
  if ARGV[3] == 'complete' and f[1] == 'finished' and f[2] == ARGV[4] and f[3] == ARGV[5] then
    return 0
  end
  -- Only now tell a record that is gone (its retention ran out) from one another attempt
  -- owns: the common path costs one call fewer.
  if not f[1] and redis.call('EXISTS', key) == 0 then
    return 3
  end
  return 1
end
local exp = num(f[4])
if corrupt then
  return 4
end

if ARGV[3] == 'complete' and not (exp and now > exp) then
  if ARGV[7] == '1' then
    redis.call('HSET', key, 'status', 'finished', 'res', ARGV[6], 'fin', int(now))
    redis.call('HDEL', key, 'err', 'fail')
  else
    -- Done, its result could not be encoded: Finished without a result.
    redis.call('HSET', key, 'status', 'finished', 'fin', int(now))
    redis.call('HDEL', key, 'res', 'err', 'fail')
  end
  retain(exp, false, nil)
  return 0
end

local message = ARGV[6]
local kind = ARGV[7]
local answer = 0
if ARGV[3] == 'complete' then
  message = ARGV[8]
  kind = ARGV[9]
  answer = 2
end
redis.call('HSET', key, 'status', 'failed', 'err', message, 'fail', kind)
redis.call('HDEL', key, 'res', 'fin')
redis.call('HINCRBY', key, 'errs', 1)
retain(exp, false, nil)
return answer
