-- wrk: example 04's POST /v1/payments, every request a payment id never used before.
-- Arguments: the ids' prefix; `keyed` to send each request with an Idempotency-Key of its
-- own (the idempotent POST), anything else for the bare POST.
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("id", thread_count)
end

local counter = 0
local prefix
local keyed = false
function init(args)
  prefix = string.format("%s-%d-", args[1] or "run", id or 0)
  keyed = args[2] == "keyed"
end

function request()
  counter = counter + 1
  local payment = prefix .. counter
  local headers = { ["Content-Type"] = "application/json" }
  if keyed then
    headers["Idempotency-Key"] = '"' .. payment .. '"'
  end
  local body = '{"id":"' .. payment .. '","type":"Payment","organisation_id":"org-1",'
    .. '"attributes":{"amount":"100.21","currency":"GBP"}}'
  return wrk.format("POST", "/v1/payments", headers, body)
end
