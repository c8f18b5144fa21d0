#!/usr/bin/env bash
# Replication throughput with and without peer security, on one machine: a primary and one
# semi-sync replica, `scribe bench --commit semi-sync` against the primary, with no peer
# security, with --peer-secret, and with mutual TLS (--peer-tls-*), each RUNS times (default 2),
# with the primary's and the replica's CPU per committed transaction (user + system, /proc).
# Usage: scripts/bench-peer-security.sh [DIR]. Needs openssl for the test certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/scribe}
[ -x "$BIN" ] || cargo build --release --quiet -p scribe
DIR=${1:-$(mktemp -d)}
CLIENTS=${CLIENTS:-64}
DURATION=${DURATION:-10s}
RUNS=${RUNS:-2}
mkdir -p "$DIR/certs"
head -c 32 /dev/urandom | base64 > "$DIR/secret"; chmod 600 "$DIR/secret"
(
  cd "$DIR/certs"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
    -out ca.crt -days 2 -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout node.key \
    -out node.csr -subj /CN=node 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > node.ext
  openssl x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -out node.crt -extfile node.ext 2>/dev/null
)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap cleanup EXIT
run() { # label, security flags...
  local label=$1; shift
  for i in $(seq "$RUNS"); do
    rm -rf "$DIR/p" "$DIR/r"
    "$BIN" node --name p --data "$DIR/p" --http 127.0.0.1:5590 --peer 127.0.0.1:6590 --log warn \
      --commit semi-sync --sync-replicas "ANY 1 (*)" "$@" > "$DIR/p.out" 2> "$DIR/p.log" &
    pids+=($!)
    "$BIN" node --name r --data "$DIR/r" --http 127.0.0.1:5591 --peer 127.0.0.1:6591 --log warn \
      --follow 127.0.0.1:6590 "$@" > "$DIR/r.out" 2> "$DIR/r.log" &
    pids+=($!)
    for port in 5590 5591; do
      for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v1/status" >/dev/null && break; sleep 0.1; done
    done
    sleep 1
    local pp=${pids[-2]} rp=${pids[-1]} before after out
    before="$(awk '{print $14 + $15}' "/proc/$pp/stat") $(awk '{print $14 + $15}' "/proc/$rp/stat")"
    out=$("$BIN" bench --url http://127.0.0.1:5590 --clients "$CLIENTS" --warmup 0s \
      --duration "$DURATION" --commit semi-sync --json 2>>"$DIR/bench.err")
    after="$(awk '{print $14 + $15}' "/proc/$pp/stat") $(awk '{print $14 + $15}' "/proc/$rp/stat")"
    python3 - "$label" "$i" "$before" "$after" "$(getconf CLK_TCK)" "${DURATION%s}" "$out" <<'PY'
import json, sys
label, run, before, after, hz, secs, out = sys.argv[1:8]
b, a = [int(x) for x in before.split()], [int(x) for x in after.split()]
lvl = json.loads(out)["levels"][0]
tx = max(lvl["tps"] * float(secs), 1)
p, r = (a[0] - b[0]) / int(hz), (a[1] - b[1]) / int(hz)
print(f'{label:<18} run {run}: {lvl["tps"]:>7.0f} tx/s  p50 {lvl["p50_ms"]:.2f} ms  p99 {lvl["p99_ms"]:.2f} ms  '
      f'errors {lvl.get("errors", 0)}  CPU/tx primary {p / tx * 1e6:.0f} us, replica {r / tx * 1e6:.0f} us')
PY
    cleanup
  done
}
run "no peer security"
run "--peer-secret" --peer-secret "$DIR/secret"
run "mutual TLS" --peer-tls-cert "$DIR/certs/node.crt" --peer-tls-key "$DIR/certs/node.key" \
  --peer-tls-ca "$DIR/certs/ca.crt"
