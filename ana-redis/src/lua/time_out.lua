-- time_out: ARGV[3] the error message and ARGV[4] the failure kind to store.
-- Marks the record Failed when it is Running past its timeout (on this server's clock, checked
-- here again: the scan that found it read it earlier). Returns 1 when it did, 0 otherwise.
local f = redis.call('HMGET', key, 'status', 'timeout', 'exp')
if f[1] ~= 'running' then
  return 0
end
local held_until = num(f[2])
local exp = num(f[3])
if corrupt or held_until == nil or now < held_until then
  return 0
end
redis.call('HSET', key, 'status', 'failed', 'err', ARGV[3], 'fail', ARGV[4])
redis.call('HDEL', key, 'res', 'fin')
redis.call('HINCRBY', key, 'errs', 1)
retain(exp, false, nil)
return 1
