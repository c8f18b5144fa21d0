#!/usr/bin/env bash
# Multi-master on one machine, against primary/replica on the same table: write throughput per
# node and in total with three masters (HTTP `scribe bench`, and pgbench's single-row insert
# through each master's PostgreSQL port), the apply lag of each master's peers (p50/p99 from the
# masters' apply-lag histograms), remote-apply throughput (a master that was down catching up),
# and the cost per write of multi-master's metadata (CPU and change-log bytes per transaction)
# next to a primary with two async replicas. Each configuration RUNS times (default 2).
# Usage: scripts/bench-multi-master.sh [DIR]. Environment: CLIENTS=48 (HTTP clients in all),
# DURATION=10 (seconds), RUNS=2, PG_CLIENTS=8 (pgbench -c per master), BIN, SECTIONS="http seed
# pgbench" (which parts to run).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BIN=${BIN:-target/release/scribe}
[ -x "$BIN" ] || cargo build --release --quiet -p scribe
DIR=${1:-$(mktemp -d)}
mkdir -p "$DIR"
CLIENTS=${CLIENTS:-48}
DURATION=${DURATION:-10}
RUNS=${RUNS:-2}
PG_CLIENTS=${PG_CLIENTS:-8}
SECTIONS=${SECTIONS:-http seed pgbench}
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
HZ=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_up() { for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/v1/status" >/dev/null && return; sleep 0.05; done; echo "node on $1 did not start" >&2; exit 1; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
masters() { # start n1..n3 as masters; extra flags for all
  for i in 1 2 3; do
    local peers="" j
    for j in 1 2 3; do [ "$j" = "$i" ] || peers+="n$j=127.0.0.1:670$j,"; done
    "$BIN" node --name "n$i" --data "$DIR/m$i" --http "127.0.0.1:560$i" --peer "127.0.0.1:670$i" \
      --pg "127.0.0.1:580$i" --log warn --multi-master --peers "${peers%,}" "$@" \
      > "$DIR/m$i.out" 2> "$DIR/m$i.log" &
    pids+=($!)
  done
  for i in 1 2 3; do wait_up "560$i"; done
}
converged() { # waits until the three version vectors agree; prints how long it took
  local t0; t0=$(date +%s.%N)
  while :; do
    local a b c
    a=$(curl -s http://127.0.0.1:5601/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["multi_master"]["version_vector"])')
    b=$(curl -s http://127.0.0.1:5602/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["multi_master"]["version_vector"])')
    c=$(curl -s http://127.0.0.1:5603/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["multi_master"]["version_vector"])')
    [ "$a" = "$b" ] && [ "$b" = "$c" ] && break
    sleep 0.05
  done
  python3 -c "import time; print(f'{time.time() - $t0:.2f}')"
}
lag() { # p50 and p99 of the apply-lag histograms of all three masters' peers, in ms
  for i in 1 2 3; do curl -s "http://127.0.0.1:560$i/metrics"; done | python3 -c '
import sys, collections
b = collections.Counter()
for line in sys.stdin:
    if line.startswith("scribe_replica_apply_lag_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        b[float("inf") if le == "+Inf" else float(le)] += float(line.split()[-1])
les = sorted(b)
total = b[les[-1]] if les else 0
def q(p):
    for le in les:
        if b[le] >= p * total:
            return le * 1000
    return float("nan")
print(f"{q(0.5):.1f} {q(0.99):.1f} {int(total)}")'
}
report() { python3 - "$@" <<'PY'
import json, sys
label, run, secs, hz, cpu0, cpu1, bytes0, bytes1, *outs = sys.argv[1:]
levels = [json.loads(o)["levels"][0] for o in outs]
tps = [l["tps"] for l in levels]
total = sum(tps)
tx = max(total * float(secs), 1)
c0, c1 = [float(x) for x in cpu0.split()], [float(x) for x in cpu1.split()]
cpu = sum(b - a for a, b in zip(c0, c1)) / int(hz)
logb = sum(float(b) - float(a) for a, b in zip(bytes0.split(), bytes1.split()))
per = " + ".join(f"{t:.0f}" for t in tps)
p99 = max(l["p99_ms"] for l in levels)
p50 = max(l["p50_ms"] for l in levels)
print(f"{label:<34} run {run}: {total:>6.0f} tx/s ({per})  p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
      f"CPU/tx (all nodes) {cpu / tx * 1e6:.0f} us  log bytes/tx (all nodes) {logb / tx:.0f}")
PY
}
bench_one() { "$BIN" bench --url "http://127.0.0.1:$1" --clients "$2" --warmup 1s --duration "${DURATION}s" --text-key --json 2>>"$DIR/bench.err"; }
section http && echo "== HTTP single-row inserts, $CLIENTS clients in all, ${DURATION}s, text primary key =="
section http && for run in $(seq "$RUNS"); do
  # Primary/replica: one primary, two async replicas; all clients on the primary.
  rm -rf "$DIR"/p "$DIR"/r1 "$DIR"/r2
  "$BIN" node --name p --data "$DIR/p" --http 127.0.0.1:5590 --peer 127.0.0.1:6690 --log warn > /dev/null 2> "$DIR/p.log" &
  pids+=($!)
  "$BIN" node --name r1 --data "$DIR/r1" --http 127.0.0.1:5591 --follow 127.0.0.1:6690 --log warn > /dev/null 2> "$DIR/r1.log" &
  pids+=($!)
  "$BIN" node --name r2 --data "$DIR/r2" --http 127.0.0.1:5592 --follow 127.0.0.1:6690 --log warn > /dev/null 2> "$DIR/r2.log" &
  pids+=($!)
  for port in 5590 5591 5592; do wait_up $port; done
  sleep 0.5
  c0="$(cpu "${pids[0]}") $(cpu "${pids[1]}") $(cpu "${pids[2]}")"
  b0="$(metric 5590 scribe_log_written_bytes_total) $(metric 5591 scribe_log_written_bytes_total) $(metric 5592 scribe_log_written_bytes_total)"
  out=$(bench_one 5590 "$CLIENTS")
  c1="$(cpu "${pids[0]}") $(cpu "${pids[1]}") $(cpu "${pids[2]}")"
  b1="$(metric 5590 scribe_log_written_bytes_total) $(metric 5591 scribe_log_written_bytes_total) $(metric 5592 scribe_log_written_bytes_total)"
  report "primary + 2 replicas" "$run" "$DURATION" "$HZ" "$c0" "$c1" "$b0" "$b1" "$out"
  cleanup
  # Three masters: a third of the clients on each.
  rm -rf "$DIR"/m1 "$DIR"/m2 "$DIR"/m3
  masters
  sleep 0.5
  c0="$(cpu "${pids[0]}") $(cpu "${pids[1]}") $(cpu "${pids[2]}")"
  b0="$(metric 5601 scribe_log_written_bytes_total) $(metric 5602 scribe_log_written_bytes_total) $(metric 5603 scribe_log_written_bytes_total)"
  # The table is created on n1, the node that runs schema changes, before the others write.
  bench_one 5601 1 >/dev/null
  converged >/dev/null
  third=$((CLIENTS / 3))
  bench_one 5601 "$third" > "$DIR/o1" & o1=$!
  bench_one 5602 "$third" > "$DIR/o2" & o2=$!
  bench_one 5603 "$third" > "$DIR/o3" & o3=$!
  wait $o1 $o2 $o3
  took=$(converged)
  c1="$(cpu "${pids[0]}") $(cpu "${pids[1]}") $(cpu "${pids[2]}")"
  b1="$(metric 5601 scribe_log_written_bytes_total) $(metric 5602 scribe_log_written_bytes_total) $(metric 5603 scribe_log_written_bytes_total)"
  report "3 masters" "$run" "$DURATION" "$HZ" "$c0" "$c1" "$b0" "$b1" "$(cat "$DIR/o1")" "$(cat "$DIR/o2")" "$(cat "$DIR/o3")"
  read -r p50 p99 n <<< "$(lag)"
  echo "   peers' apply lag over $n transactions: p50 ${p50} ms, p99 ${p99} ms (histogram bucket bounds); converged ${took} s after the clients stopped"
  # Remote apply: n3 stops, n1 takes writes alone for DURATION, n3 comes back and catches up.
  kill "${pids[2]}"; wait "${pids[2]}" 2>/dev/null || true
  out=$(bench_one 5601 "$third")
  seq1=$(curl -s http://127.0.0.1:5601/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["multi_master"]["version_vector"]["n1"])')
  have=$(curl -s http://127.0.0.1:5602/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["multi_master"]["version_vector"].get("n1", 0))')
  t0=$(date +%s.%N)
  "$BIN" node --name n3 --data "$DIR/m3" --http 127.0.0.1:5603 --peer 127.0.0.1:6703 --pg 127.0.0.1:5803 --log warn \
    --multi-master --peers n1=127.0.0.1:6701,n2=127.0.0.1:6702 > /dev/null 2>> "$DIR/m3.log" &
  pids[2]=$!
  wait_up 5603
  before=$(curl -s http://127.0.0.1:5603/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["multi_master"]["version_vector"].get("n1", 0))')
  took=$(converged)
  t1=$(date +%s.%N)
  python3 -c "n = $seq1 - $before; t = $t1 - $t0; print(f'   remote apply: n3 was down while n1 took {n} transactions; back up, it applied them in {t:.2f} s from its start: {n / t:.0f} records/s (n2 kept up meanwhile: it had {$have} of n1)')"
  cleanup
done

section seed && echo "== seeding a new master: the peers keep 8 MiB of log, n1 takes ${DURATION}s of inserts, then n3 starts empty =="
section seed && for run in $(seq "$RUNS"); do
  rm -rf "$DIR"/m1 "$DIR"/m2 "$DIR"/m3
  masters --segment-bytes 1048576 --max-log-size 8388608
  bench_one 5601 1 >/dev/null
  converged >/dev/null
  kill "${pids[2]}"; wait "${pids[2]}" 2>/dev/null || true
  rm -rf "$DIR/m3"
  out=$(bench_one 5601 "$((CLIENTS / 3))")
  sleep 6 # retention runs every 5 s
  first=$(curl -s http://127.0.0.1:5601/v1/status | python3 -c 'import json,sys; print(json.load(sys.stdin)["log_first_lsn"])')
  rows=$(curl -s http://127.0.0.1:5601/v1/query -d '{"sql":"SELECT count(*) FROM bench_insert"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])')
  t0=$(date +%s.%N)
  "$BIN" node --name n3 --data "$DIR/m3" --http 127.0.0.1:5603 --peer 127.0.0.1:6703 --pg 127.0.0.1:5803 --log info \
    --multi-master --peers n1=127.0.0.1:6701,n2=127.0.0.1:6702 --segment-bytes 1048576 --max-log-size 8388608 > /dev/null 2> "$DIR/m3-seed.log" &
  pids[2]=$!
  wait_up 5603
  converged >/dev/null
  t1=$(date +%s.%N)
  have=$(curl -s http://127.0.0.1:5603/v1/query -d '{"sql":"SELECT count(*) FROM bench_insert"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])')
  bytes=$(sed 's/\x1b\[[0-9;]*m//g' "$DIR/m3-seed.log" | grep -o 'receiving a snapshot at=[0-9/]* bytes=[0-9]*' | head -1 | sed 's/.*bytes=//' || true)
  python3 -c "t = $t1 - $t0; print(f'   run $run: {$rows} rows, the peers\' logs start at lsn {$first}; n3 seeded from a {int(\"${bytes:-0}\") / 1e6:.1f} MB snapshot and converged {t:.2f} s after its start, holding {$have} rows')"
  cleanup
done

section pgbench && echo "== pgbench single-row inserts (scripts/pgbench/insert-mm.sql), $PG_CLIENTS clients on each master, ${DURATION}s =="
section pgbench && for run in $(seq "$RUNS"); do
  rm -rf "$DIR"/m1 "$DIR"/m2 "$DIR"/m3
  masters
  psql -q -h 127.0.0.1 -p 5801 -U scribe -d scribe -c 'CREATE TABLE bench_mm (k BIGINT NOT NULL PRIMARY KEY, v TEXT)' >/dev/null
  converged >/dev/null
  for i in 1 2 3; do
    pgbench -n -h 127.0.0.1 -p "580$i" -U scribe -c "$PG_CLIENTS" -j 2 -T "$DURATION" -f "$REPO/scripts/pgbench/insert-mm.sql" scribe > "$DIR/pg$i" 2>&1 &
    eval "g$i=\$!"
  done
  wait "$g1" "$g2" "$g3"
  converged >/dev/null
  python3 - "$run" "$DIR/pg1" "$DIR/pg2" "$DIR/pg3" <<'PY'
import re, sys
run, *files = sys.argv[1:]
tps = []
for f in files:
    text = open(f).read()
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    tps.append(float(m.group(1)) if m else 0.0)
    if not m:
        print(f"   {f}: {text[-300:]}")
rows = " + ".join(f"{t:.0f}" for t in tps)
print(f"3 masters, pgbench insert           run {run}: {sum(tps):>6.0f} tx/s ({rows})")
PY
  n=$(curl -s http://127.0.0.1:5602/v1/query -d '{"sql":"SELECT count(*) FROM bench_mm"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0][0])')
  echo "   rows on n2 after convergence: $n"
  cleanup
done
