#!/usr/bin/env bash
# What cluster mode costs on the write path: the same insert benchmark against three nodes
# started with --follow (a primary and two manually managed replicas) and with --cluster (the
# control plane, the primary renewing its lease every 200 ms, the writer checking it), twice
# each, alternating, in async and semi-sync, with the nodes' CPU per committed transaction. Then
# a planned switchover under load, with the pause it reports. Usage: scripts/bench-failover.sh [DIR]. Figures go to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p scribe
BIN=target/release/scribe
DIR=${1:-$(mktemp -d)}
mkdir -p "$DIR"
CLIENTS=${CLIENTS:-8,64}
DURATION=${DURATION:-10s}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
wait_up() {
  for port in 5580 5581 5582; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/status" >/dev/null && break; sleep 0.1; done
  done
}
start_follow() { # mode
  rm -rf "$DIR"/n1 "$DIR"/n2 "$DIR"/n3
  "$BIN" node --name n1 --data "$DIR/n1" --http 127.0.0.1:5580 --peer 127.0.0.1:6580 --commit "$1" --log warn 2>"$DIR/n1.log" >/dev/null & pids+=($!)
  for i in 2 3; do
    "$BIN" node --name n$i --data "$DIR/n$i" --http 127.0.0.1:558$((i-1)) --peer 127.0.0.1:658$((i-1)) --follow 127.0.0.1:6580 --log warn 2>"$DIR/n$i.log" >/dev/null & pids+=($!)
  done
  wait_up; sleep 1
}
start_cluster() { # mode
  rm -rf "$DIR"/n1 "$DIR"/n2 "$DIR"/n3
  local list=n1=127.0.0.1:6580,n2=127.0.0.1:6581,n3=127.0.0.1:6582
  for i in 1 2 3; do
    "$BIN" node --name n$i --data "$DIR/n$i" --http 127.0.0.1:558$((i-1)) --peer 127.0.0.1:658$((i-1)) --cluster $list --commit "$1" --log warn 2>"$DIR/n$i.log" >/dev/null & pids+=($!)
  done
  wait_up
  # Wait for the primary and both replicas to stream.
  for _ in $(seq 200); do
    n=$(for port in 5580 5581 5582; do curl -sf "http://127.0.0.1:$port/v1/status"; echo; done \
      | python3 -c 'import json,sys
s=[json.loads(l) for l in sys.stdin if l.strip()]
p=[x for x in s if x["role"]=="primary" and x["accepting_writes"]]
print(sum(1 for r in p[0]["replicas"] if r["state"]=="streaming") if p else 0)')
    [ "$n" = 2 ] && break; sleep 0.1
  done
}
# User + system CPU ticks of the node processes started so far.
cpu_ticks() {
  local t=0
  for p in "${pids[@]}"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
primary_url() {
  for port in 5580 5581 5582; do
    if curl -sf "http://127.0.0.1:$port/v1/status" | grep -q '"role":"primary"'; then echo "http://127.0.0.1:$port"; return; fi
  done
}
# ONLY_SWITCHOVER=1 skips the throughput comparison.
MODES="async semi-sync"
[ -n "${ONLY_SWITCHOVER:-}" ] && MODES=""
for mode in $MODES; do
  for round in 1 2; do
    for topo in follow cluster; do
      "start_$topo" "$mode"
      echo "== $mode, --$topo, run $round"
      for c in ${CLIENTS//,/ }; do
        # CPU of the three node processes (user + system, from /proc) over the level, per
        # committed transaction: what the cluster spends on each write, whatever the machine's
        # noise does to throughput.
        before=$(cpu_ticks)
        out=$("$BIN" bench --url "$(primary_url)" --clients "$c" --warmup 0s --duration "$DURATION" --commit "$mode" --json 2>/dev/null)
        after=$(cpu_ticks)
        python3 - "$before" "$after" "$(getconf CLK_TCK)" "${DURATION%s}" "$out" <<'PY'
import json, sys
before, after, hz, secs, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
lvl = json.loads(out)["levels"][0]
tx = lvl["tps"] * secs
cpu = (after - before) / hz
print(f'{lvl["clients"]:>4} clients: {lvl["tps"]:>8.0f} tx/s  p50 {lvl["p50_ms"]:.2f} ms  p99 {lvl["p99_ms"]:.2f} ms  node CPU {cpu:.2f} s = {cpu / tx * 1e6:.0f} us/tx')
PY
      done
      cleanup
    done
  done
done
echo "== planned switchover under load (async, 8 clients)"
start_cluster async
P=$(primary_url)
"$BIN" bench --url "$P" --clients 8 --duration 6s --commit async > "$DIR/bench-during-switchover.txt" 2>&1 &
bench=$!
sleep 2
TARGET=""
for _ in $(seq 50); do
  TARGET=$(curl -sf "$P/v1/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((r["name"] for r in s["replicas"] if r["state"]=="streaming"), ""))')
  [ -n "$TARGET" ] && break; sleep 0.1
done
"$BIN" switchover --to "$TARGET" --url "$P"
wait $bench || true
cat "$DIR/bench-during-switchover.txt"
