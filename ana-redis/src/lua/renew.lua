-- renew: ARGV[3] the lease (attempt and claim number, 20 digits each, as the header holds
-- them), ARGV[4] the lease in microseconds.
-- Returns the new timeout, or -1 when the lease no longer holds the record (nothing changed),
-- or -2 when the record is corrupt.
local v = redis.pcall('GET', key)
if type(v) ~= 'string' or not is_record(v)
    or string.sub(v, AT_STATUS, AT_STATUS) ~= RUNNING
    or string.sub(v, AT_ATTEMPT, AT_CLAIM + 19) ~= ARGV[3] then
  return -1
end
local exp = time_at(v, AT_EXPIRATION)
if corrupt then
  return -2
end
local timeout = now + tonumber(ARGV[4])
store(string.sub(v, 1, AT_TIMEOUT - 1) .. time_field(timeout)
  .. string.sub(v, AT_EXPIRATION), exp, true, timeout)
return timeout
