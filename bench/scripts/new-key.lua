-- wrk: every request a POST with a key never used before.
-- Arguments: the keys' prefix; optionally a file of `Cookie` header values, one a line,
-- sent in turn (for a peer that keeps its records in sessions).
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("id", thread_count)
end

local counter = 0
local prefix
local cookies = {}
function init(args)
  prefix = string.format("%s-%d-", args[1] or "run", id or 0)
  if args[2] then
    for line in io.lines(args[2]) do
      cookies[#cookies + 1] = line
    end
  end
end

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Idempotency-Key"] = prefix .. counter,
  }
  if #cookies > 0 then
    headers["Cookie"] = cookies[counter % #cookies + 1]
  end
  return wrk.format("POST", "/bench", headers, '{"amount":100,"currency":"EUR"}')
end
