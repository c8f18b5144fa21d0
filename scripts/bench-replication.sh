#!/usr/bin/env bash
# The insert benchmark against a primary with two replicas, in each commit mode, on one machine.
# Usage: scripts/bench-replication.sh [DIR] — builds the release binary, starts n1 (primary) and
# n2, n3 (replicas) under DIR (default: a temporary directory), runs `scribe bench` in async,
# semi-sync and sync mode (sync set ANY 1 (*)), then async at half the measured async maximum to
# read replication lag, and stops the nodes. Figures go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/scribe
DIR=${1:-$(mktemp -d)}
CLIENTS=${CLIENTS:-8,64}
DURATION=${DURATION:-10s}
rm -rf "$DIR/n1" "$DIR/n2" "$DIR/n3"
mkdir -p "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # name http peer [follow]
  local args=(node --name "$1" --data "$DIR/$1" --http "127.0.0.1:$2" --peer "127.0.0.1:$3" --log warn)
  if [ $# -ge 4 ]; then args+=(--follow "127.0.0.1:$4"); else args+=(--sync-replicas "ANY 1 (*)"); fi
  "$BIN" "${args[@]}" > "$DIR/$1.out" 2> "$DIR/$1.log" &
  pids+=($!)
}
start n1 5580 6580
start n2 5581 6581 6580
start n3 5582 6582 6580
for port in 5580 5581 5582; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/status" >/dev/null && break; sleep 0.1; done
done
sleep 1
URL=http://127.0.0.1:5580
for mode in async semi-sync sync; do
  echo "== commit $mode, sync set ANY 1 (*)"
  "$BIN" bench --url "$URL" --clients "$CLIENTS" --duration "$DURATION" --commit "$mode"
done
MAX=$("$BIN" bench --url "$URL" --clients 64 --duration 5s --commit async --json 2>/dev/null \
  | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["levels"][0]["tps"]))')
HALF=$((MAX / 2))
echo "== async at half of the maximum ($MAX tx/s): offered $HALF tx/s"
"$BIN" bench --url "$URL" --clients 64 --duration "$DURATION" --commit async --rate "$HALF"
"$BIN" status --url "$URL"
