-- restore: ARGV[3] expiration or '', ARGV[4] '1' when Running, ARGV[5] timeout or '', then
-- field, value pairs. Replaces the record with exactly these fields.
redis.call('DEL', key)
local fields = {}
for i = 6, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', key, unpack(fields))
local exp = nil
if ARGV[3] ~= '' then
  exp = tonumber(ARGV[3])
end
local timeout = nil
if ARGV[5] ~= '' then
  timeout = tonumber(ARGV[5])
end
retain(exp, ARGV[4] == '1', timeout)
return 1
