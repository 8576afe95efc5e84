-- renew: ARGV[3] attempt, ARGV[4] claim number, ARGV[5] the lease in microseconds.
-- Returns the new timeout, or -1 when the lease no longer holds the record (nothing changed),
-- or -2 when the record is corrupt.
local f = redis.call('HMGET', key, 'status', 'att', 'tok', 'exp')
if f[1] ~= 'running' or f[2] ~= ARGV[3] or f[3] ~= ARGV[4] then
  return -1
end
local exp = num(f[4])
if corrupt then
  return -2
end
local timeout = now + tonumber(ARGV[5])
redis.call('HSET', key, 'timeout', int(timeout))
retain(exp, true, timeout)
return timeout
