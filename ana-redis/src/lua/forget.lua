-- forget: ARGV[3] '1' to delete even a record whose holder may still be at work.
-- Returns {0} when there is no record, {1} when it was deleted, {2, timeout} when it is
-- Running with its holder maybe still at work (timeout '' when it has none), {3} when its
-- timeout is not a number. Decided and deleted in one script: a claim cannot come between.
local f = redis.call('HMGET', key, 'status', 'timeout')
if ARGV[3] ~= '1' and f[1] == 'running' then
  local held_until = num(f[2])
  if corrupt then
    return {3}
  end
  if held_until == nil or now < held_until then
    return {2, f[2] or ''}
  end
end
return {redis.call('DEL', key)}
