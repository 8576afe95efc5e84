#!/usr/bin/env bash
# Runs the ana-redis conformance suite on a real 3-master Redis Cluster.
#
# Starts three `redis-server --cluster-enabled yes` on 127.0.0.1 (ports 7301-7303, or
# REDIS_CLUSTER_PORTS="p1 p2 p3"), each in a fresh temporary directory, joins them with
# `redis-cli --cluster create ... --cluster-replicas 0`, waits (bounded) for cluster_state:ok,
# runs tests/cluster.rs with REDIS_CLUSTER_URLS set, and always stops the servers and removes
# the directory afterwards. Extra arguments go to the test runner.
set -euo pipefail

cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
read -r -a ports <<<"${REDIS_CLUSTER_PORTS:-7301 7302 7303}"

for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "redis-cluster: $tool is not installed (apt-get install redis-server)" >&2; exit 1; }
done
for port in "${ports[@]}"; do
  if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then
    echo "redis-cluster: port $port already answers; stop that server or set REDIS_CLUSTER_PORTS" >&2
    exit 1
  fi
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/ana-redis-cluster.XXXXXX")
pids=()
stop() {
  for port in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s, bounded.
wait_for() {
  local seconds=$1 what=$2; shift 2
  for _ in $(seq 1 $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "redis-cluster: $what not reached within ${seconds}s (logs in $dir)" >&2
  tail -n 20 "$dir"/*.log >&2 || true
  return 1
}

for port in "${ports[@]}"; do
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
    --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
    --cluster-node-timeout 5000 --dir "$dir/$port" --save "" --appendonly no \
    --logfile "$dir/$port.log" &
  pids+=("$!")
done
for port in "${ports[@]}"; do
  wait_for 15 "redis-server on $port" redis-cli -h 127.0.0.1 -p "$port" ping
done

nodes=()
urls=()
for port in "${ports[@]}"; do
  nodes+=("127.0.0.1:$port")
  urls+=("redis://127.0.0.1:$port")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 || {
  cat "$dir/create.log" >&2
  exit 1
}

cluster_ok() {
  for port in "${ports[@]}"; do
    redis-cli -h 127.0.0.1 -p "$port" cluster info | grep -q '^cluster_state:ok' || return 1
  done
}
wait_for 30 "cluster_state:ok on every node" cluster_ok
echo "redis-cluster: ${#ports[@]} masters up on ${nodes[*]}"

REDIS_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")
export REDIS_CLUSTER_URLS
if "$CARGO" nextest --version >/dev/null 2>&1; then
  "$CARGO" nextest run -p ana-redis --features cluster-tests --test cluster --no-fail-fast "$@"
else
  "$CARGO" test -p ana-redis --features cluster-tests --test cluster --no-fail-fast "$@"
fi
