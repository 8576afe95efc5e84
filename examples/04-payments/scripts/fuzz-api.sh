#!/usr/bin/env bash
# `make fuzz-api`: schemathesis (from PyPI, in a venv under the target folder) against the
# payments service on a free loopback port (a SQLite file in a temporary folder), every check,
# for FUZZ_SECONDS (default 120); the service is stopped afterwards. Its configuration and
# hooks are in ../fuzz/; its state (crash files) goes under the target folder.
set -euo pipefail

CARGO=${CARGO:-cargo}
seconds=${FUZZ_SECONDS:-120}
here=$(cd "$(dirname "$0")/.." && pwd)
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

export PAYMENTS_FUZZ="$here/fuzz" PAYMENTS_FUZZ_STATE="$target_dir/schemathesis-state"
# --max-time bounds the run (the fuzzing and stateful phases go on until it is spent); the
# timeout only guards against a run that does not stop.
timeout $((seconds + 120)) "$venv/bin/schemathesis" --config-file "$here/fuzz/schemathesis.toml" \
  run "$base/openapi.json" --url "$base" --checks all --max-time "$seconds" \
  --exclude-path /admin/repo
