#!/usr/bin/env bash
# The cost of logging in on the PostgreSQL port: `pgbench -C` (a new connection for every
# transaction, each `SELECT 1`) against Scribe without users (trust) and with --users
# (SCRAM-SHA-256), and against PostgreSQL 15 with trust and with scram-sha-256, RUNS times each
# (default 2), alternating, with the server's CPU per connection (user + system, from /proc; for
# PostgreSQL the postmaster and its backends, which end with their connections, are counted
# through the postmaster's cumulative children's time).
#
#   scripts/bench-login.sh            CLIENTS (default 8), DURATION seconds (default 10),
#                                     PG_BIN (default /usr/lib/postgresql/15/bin), PG_USER
#                                     (default pgbench: who PostgreSQL runs as under root)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/scribe}
[ -x "$BIN" ] || cargo build --release --quiet -p scribe
BIN=$(realpath "$BIN")
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=${PG_USER:-pgbench}
CLIENTS=${CLIENTS:-8}
DURATION=${DURATION:-10}
RUNS=${RUNS:-2}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-login.XXXXXX")
chmod 755 "$WORK"
PORT=5597
pid=""
pgdir=""
if [ "$(id -u)" = 0 ]; then
  id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
  as_pg() { runuser -u "$PG_USER" -- "$@"; }
else
  as_pg() { "$@"; }
fi
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  [ -n "$pgdir" ] && as_pg "$PG_BIN/pg_ctl" -D "$pgdir" -m immediate stop >/dev/null 2>&1
  pid=""; pgdir=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT
echo "SELECT 1;" > "$WORK/select.sql"
echo secret | "$BIN" user add bench --role write --password-stdin --users "$WORK/users.toml" 2>/dev/null

cpu_of() { # pid: own + reaped children's CPU ticks
  awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"
}

measure() { # label, pid, user
  local before after out n
  before=$(cpu_of "$2")
  out=$(PGPASSWORD=secret "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U "$3" -n -C -c "$CLIENTS" \
    -j 2 -T "$DURATION" -f "$WORK/select.sql" bench 2>&1) || { echo "$out" >&2; exit 1; }
  after=$(cpu_of "$2")
  n=$(echo "$out" | sed -n 's/.*number of transactions actually processed: \([0-9]*\).*/\1/p')
  python3 - "$1" "$n" "$before" "$after" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import sys
label, n, before, after, hz, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
cpu = (after - before) / hz
print(f"{label:<26} {n / secs:>7.0f} connections/s  server CPU {cpu:.2f} s = {cpu / max(n, 1) * 1e6:.0f} us/connection")
PY
}

scribe() { # label, extra node flags...
  local label=$1; shift
  rm -rf "$WORK/node"
  "$BIN" node --name b1 --data "$WORK/node" --http 127.0.0.1:5598 --pg "127.0.0.1:$PORT" \
    --log warn "$@" > "$WORK/node.out" 2> "$WORK/node.log" &
  pid=$!
  for _ in $(seq 100); do curl -so /dev/null "http://127.0.0.1:5598/health" && break; sleep 0.1; done
  local user=scribe
  [ $# -gt 0 ] && user=bench
  measure "$label" "$pid" "$user"
  cleanup
}

postgres() { # label, auth method
  pgdir=$WORK/pg
  rm -rf "$pgdir"
  mkdir -m 700 "$pgdir"
  : > "$pgdir.log"
  [ "$(id -u)" = 0 ] && chown "$PG_USER" "$pgdir" "$pgdir.log"
  echo secret > "$WORK/pw"
  chmod 644 "$WORK/pw"
  as_pg "$PG_BIN/initdb" -D "$pgdir" -U bench --pwfile="$WORK/pw" --auth="$2" -E UTF8 \
    --no-instructions > "$WORK/initdb.log" 2>&1
  as_pg "$PG_BIN/pg_ctl" -D "$pgdir" -l "$pgdir.log" -w -o "-p $PORT -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
  PGPASSWORD=secret "$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U bench bench
  measure "$1" "$(head -1 "$pgdir/postmaster.pid")" bench
  cleanup
}

for run in $(seq "$RUNS"); do
  echo "== run $run: pgbench -C, $CLIENTS clients, ${DURATION}s each"
  scribe "scribe, no users (trust)"
  scribe "scribe --users (SCRAM)" --users "$WORK/users.toml"
  postgres "postgres 15, trust" trust
  postgres "postgres 15, scram-sha-256" scram-sha-256
done
