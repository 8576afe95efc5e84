#!/usr/bin/env bash
# `make fuzz-api`: schemathesis (from PyPI, in a venv under target/) against the payments
# service on a free loopback port (a SQLite file in a temporary folder), for FUZZ_SECONDS
# (default 120) and FUZZ_EXAMPLES per operation (default 100); the service is stopped
# afterwards.
set -euo pipefail

CARGO=${CARGO:-cargo}
seconds=${FUZZ_SECONDS:-120}
target_dir=$($CARGO metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
venv="$target_dir/schemathesis-venv"
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis
fi

$CARGO build -q -p example-04-payments
work=$(mktemp -d)
"$target_dir/debug/example-04-payments" --listen 127.0.0.1:0 --repo-uri "sqlite://$work/fuzz.db" \
  --admin >"$work/out" 2>"$work/log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do grep -q Listening "$work/out" && break; sleep 0.1; done
base=$(sed -n 's/^Listening on //p' "$work/out")
[ -n "$base" ] || { echo "fuzz-api: the service did not start" >&2; cat "$work/log" >&2; exit 1; }

timeout "$seconds" "$venv/bin/schemathesis" run "$base/openapi.json" --url "$base" \
  --checks all --max-examples "${FUZZ_EXAMPLES:-100}" --exclude-path /admin/repo
