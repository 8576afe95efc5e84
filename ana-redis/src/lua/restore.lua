-- restore: ARGV[3] expiration or '', ARGV[4] '1' when Running, ARGV[5] timeout or '', ARGV[6]
-- the record's string. Replaces whatever the key holds.
local exp = nil
if ARGV[3] ~= '' then
  exp = tonumber(ARGV[3])
end
local timeout = nil
if ARGV[5] ~= '' then
  timeout = tonumber(ARGV[5])
end
store(ARGV[6], exp, ARGV[4] == '1', timeout)
return 1
