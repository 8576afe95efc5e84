-- wrk: every request a POST with a key never used before.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("id", thread_count)
end

local counter = 0
local prefix
function init(args)
  prefix = string.format("%s-%d-", args[1] or "run", id or 0)
end

function request()
  counter = counter + 1
  return wrk.format("POST", "/bench", {
    ["Content-Type"] = "application/json",
    ["X-Idempotency-Key"] = prefix .. counter,
  }, '{"amount":100,"currency":"EUR"}')
end
