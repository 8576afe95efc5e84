-- complete / fail: ARGV[3] 'complete' or 'fail', ARGV[4] the lease (attempt and claim number,
-- 20 digits each, as the header holds them), ARGV[5] result (complete) or error message
-- (fail), ARGV[6] '1' when complete has a result and '0' when it could not be encoded
-- (complete) or the failure kind (fail), ARGV[7] and ARGV[8] the error message and failure
-- kind stored when the record expired before the attempt completed.
-- Returns 0 done, 1 superseded, 2 expired (complete only), 3 record gone, 4 record corrupt.
local v = redis.pcall('GET', key)
if not v then
  -- Gone: its retention ran out.
  return 3
end
if type(v) ~= 'string' then
  -- Another type of value (a record of the hash layout written since): not this claim's.
  return 1
end
if not is_record(v) then
  return 4
end
local status = string.sub(v, AT_STATUS, AT_STATUS)
local mine = string.sub(v, AT_ATTEMPT, AT_CLAIM + 19) == ARGV[4]
if status ~= RUNNING or not mine then
  -- This claim's own complete, run again (sent again after a connection dropped before its
  -- answer came back): done, not superseded.
  if ARGV[3] == 'complete' and status == FINISHED and mine then
    return 0
  end
  return 1
end
local exp = time_at(v, AT_EXPIRATION)
if corrupt then
  return 4
end

if ARGV[3] == 'complete' and not (exp and now > exp) then
  local data = ''
  if ARGV[6] == '1' then
    data = ARGV[5]
  end
  -- Finishing point: finished.
  store(MARKER .. FINISHED .. ARGV[6] .. string.sub(v, AT_FINGERPRINT, AT_FINISHED_AT - 1)
    .. time_field(now) .. string.sub(v, AT_ERROR_COUNT, AT_ERROR_COUNT + 9) .. '00' .. data,
    exp, false, nil)
  return 0
end

local message = ARGV[5]
local kind = ARGV[6]
local answer = 0
if ARGV[3] == 'complete' then
  message = ARGV[7]
  kind = ARGV[8]
  answer = 2
end
local record = failed(v, message, kind)
if corrupt then
  return 4
end
-- Finishing point: failed (expired, when a complete came after the expiration).
store(record, exp, false, nil)
return answer
