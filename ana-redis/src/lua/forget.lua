-- forget: ARGV[3] '1' to delete even a record whose holder may still be at work.
-- Returns {0} when there is no record, {1} when it was deleted, {2, timeout} when it is
-- Running with its holder maybe still at work (timeout '' when it has none), {3} when its
-- timeout is not a number. Decided and deleted in one script: a claim cannot come between.
if ARGV[3] ~= '1' then
  local kind = redis.call('TYPE', key)['ok']
  local running, held_until = false, nil
  if kind == 'string' then
    local v = redis.call('GET', key)
    if is_record(v) and string.sub(v, AT_STATUS, AT_STATUS) == RUNNING then
      running, held_until = true, time_at(v, AT_TIMEOUT)
    end
  elseif kind == 'hash' then
    local f = redis.call('HMGET', key, 'status', 'timeout')
    running, held_until = f[1] == 'running', num(f[2])
  end
  if running then
    if corrupt then
      return {3}
    end
    if held_until == nil or now < held_until then
      return {2, held_until and int(held_until) or ''}
    end
  end
end
-- Finishing point: forgotten.
return {redis.call('DEL', key)}
