-- wrk: every request the same key and body, answered from the stored record.
-- Arguments: the key; optionally a `Cookie` header value (for a peer that keeps its records
-- in sessions).
wrk.method = "POST"
wrk.path = "/bench"
wrk.body = '{"amount":100,"currency":"EUR"}'
wrk.headers["Content-Type"] = "application/json"
function init(args)
  wrk.headers["X-Idempotency-Key"] = args[1] or "replayed"
  if args[2] then
    wrk.headers["Cookie"] = args[2]
  end
end
