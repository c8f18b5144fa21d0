#!/usr/bin/env bash
# The insert benchmark against one node in two configurations, A and B, alternating, ROUNDS times
# each (default 2), with the node's CPU per committed transaction (user + system, from /proc) —
# the figure that machine noise moves least. A configuration is a node binary, its extra flags,
# the URL scheme, and extra flags for `scribe bench` (credentials, --ca):
#
#   A_NAME=before A_BIN=/path/old/scribe B_NAME=after scripts/bench-ab.sh
#   A_NAME=open B_NAME=users B_NODE_ARGS="--users $DIR/users.toml" \
#     B_BENCH_ARGS="--user bench --password-stdin" B_STDIN="secret" scripts/bench-ab.sh
#
# Each *_BIN defaults to target/release/scribe (built first). The same `scribe bench` client
# (BENCH_BIN, default target/release/scribe) drives both. CLIENTS (default 8,64), DURATION
# (default 10s), COMMIT (default async); SKIP_BUILD=1 uses the binaries as they are. Figures go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet -p scribe
DEFAULT_BIN=$PWD/target/release/scribe
BENCH_BIN=${BENCH_BIN:-$DEFAULT_BIN}
DIR=${DIR:-$(mktemp -d)}
mkdir -p "$DIR"
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8,64}
DURATION=${DURATION:-10s}
COMMIT=${COMMIT:-async}
HTTP=127.0.0.1:5590
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; pid=""; }
trap cleanup EXIT

run() { # A|B
  local name bin node_args scheme bench_args stdin
  eval "name=\${$1_NAME:-$1} bin=\${$1_BIN:-$DEFAULT_BIN} node_args=\${$1_NODE_ARGS:-}"
  eval "scheme=\${$1_SCHEME:-http} bench_args=\${$1_BENCH_ARGS:-} stdin=\${$1_STDIN:-}"
  rm -rf "$DIR/node"
  # shellcheck disable=SC2086
  "$bin" node --name b1 --data "$DIR/node" --http "$HTTP" --log warn $node_args \
    > "$DIR/node.out" 2> "$DIR/node.log" &
  pid=$!
  local url="$scheme://$HTTP"
  for _ in $(seq 100); do
    curl -skf -o /dev/null "$url/healthz" 2>/dev/null && break
    curl -sk -o /dev/null "$url/v1/status" 2>/dev/null && break
    sleep 0.1
  done
  sleep 0.5
  echo "== $name (round $2)"
  for c in ${CLIENTS//,/ }; do
    local before after out
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    # shellcheck disable=SC2086
    out=$(printf '%s' "$stdin" | "$BENCH_BIN" bench --url "$url" --clients "$c" --warmup 0s \
      --duration "$DURATION" --commit "$COMMIT" --json $bench_args 2>>"$DIR/bench.err")
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    python3 - "$before" "$after" "$(getconf CLK_TCK)" "${DURATION%s}" "$out" <<'PY'
import json, sys
before, after, hz, secs, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
lvl = json.loads(out)["levels"][0]
tx = max(lvl["tps"] * secs, 1)
cpu = (after - before) / hz
print(f'{lvl["clients"]:>4} clients: {lvl["tps"]:>8.0f} tx/s  p50 {lvl["p50_ms"]:.2f} ms  p99 {lvl["p99_ms"]:.2f} ms  errors {lvl.get("errors", 0)}  node CPU {cpu:.2f} s = {cpu / tx * 1e6:.0f} us/tx')
PY
  done
  cleanup
}

for round in $(seq "$ROUNDS"); do
  run A "$round"
  run B "$round"
done
