-- wrk: every request the same key and body, answered from the stored record.
wrk.method = "POST"
wrk.path = "/bench"
wrk.body = '{"amount":100,"currency":"EUR"}'
wrk.headers["Content-Type"] = "application/json"
function init(args)
  wrk.headers["X-Idempotency-Key"] = args[1] or "replayed"
end
