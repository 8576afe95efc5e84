-- complete / fail: ARGV[3] 'complete' or 'fail', ARGV[4] the lease (attempt and claim number,
-- 20 digits each, as the header holds them), ARGV[5] result (complete) or error message
-- (fail), ARGV[6] '1' when complete has a result and '0' when it could not be encoded
-- (complete) or the failure kind (fail), ARGV[7] and ARGV[8] the error message and failure
-- kind stored when the record expired before the attempt completed.
-- Returns 0 done, 1 superseded, 2 expired (complete only), 3 record gone, 4 record corrupt.
-- A complete, the common case, runs with no function of helpers.lua (which come after it):
-- making their closures would be a good part of its cost.
local v = redis.pcall('GET', key)
if not v then
  -- Gone: its retention ran out.
  return 3
end
if type(v) ~= 'string' then
  -- Another type of value (a record of the hash layout written since): not this claim's.
  return 1
end
if #v < HEADER or string.sub(v, 1, 1) ~= MARKER then
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
local exp = nil
local exp_field = string.sub(v, AT_EXPIRATION, AT_EXPIRATION + 16)
if exp_field ~= NO_TIME then
  exp = tonumber(exp_field)
  if not exp then
    return 4
  end
end

if ARGV[3] == 'complete' and not (exp and now > exp) then
  local data = ''
  if ARGV[6] == '1' then
    data = ARGV[5]
  end
  local record = MARKER .. FINISHED .. ARGV[6]
    .. string.sub(v, AT_FINGERPRINT, AT_FINISHED_AT - 1) .. string.format('%017.0f', now)
    .. string.sub(v, AT_ERROR_COUNT, AT_ERROR_COUNT + 9) .. '00' .. data
  -- The TTL of a Finished record is retain_at(exp, false): its expiration plus the retention
  -- after it, which the claim already set when the timeout came before that (its TTL is the
  -- later of the two), so it is kept as it is.
  local timeout = tonumber(string.sub(v, AT_TIMEOUT, AT_TIMEOUT + 16))
  -- Finishing point: finished.
  if exp and timeout and timeout <= exp + tonumber(ARGV[1]) then
    redis.call('SET', key, record, 'KEEPTTL')
  else
    local at = now + tonumber(ARGV[2])
    if exp then
      at = exp + tonumber(ARGV[1])
    end
    redis.call('SET', key, record, 'PXAT', string.format('%.0f', math.max(1, math.floor(at / 1000))))
  end
  return 0
end
