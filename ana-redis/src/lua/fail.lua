-- The rest of finish.lua, after helpers.lua: fail, or a complete after the expiration.
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
