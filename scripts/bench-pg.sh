#!/usr/bin/env bash
# pgbench side by side: Scribe (n1 primary, n2 and n3 replicas, through `scribe node --pg`) and
# PostgreSQL 15 (a primary and two streaming standbys s1, s2), on this one machine, in each commit
# mode, with two workloads: pgbench's built-in TPC-B-like script, and a single-row INSERT
# (scripts/pgbench/insert.sql into bench_insert).
#
# Usage: scripts/bench-pg.sh [RESULTS]   (RESULTS, or the env var RESULTS: default ./bench-pg-results)
# Environment:
#   DURATION=30  seconds per pgbench run        CLIENTS=8  pgbench -c       JOBS=2  pgbench -j
#   SCALE=10     pgbench -i -s                  ONLY=both  pg | scribe | both
#   MODES="async semi-sync sync"                PG_BIN=/usr/lib/postgresql/15/bin
#   SCRIBE_BIN   default: `cargo build --release` and target/release/scribe
#   PG_USER=pgbench  the unprivileged user PostgreSQL runs as when this script runs as root
#                    (created with useradd if missing)
#   INIT_EACH_MODE=0 1: run `pgbench -i` again before every mode, not once per system
#   INIT_ARGS    extra flags for `pgbench -i` (e.g. "-I dtgp" to skip its vacuum step)
#   PROGRESS=5   pgbench -P (0: off)   PGBENCH_ARGS  extra pgbench flags for every run (e.g. "-M extended")
#   KEEP_TMP=0   1: keep the temporary directory (data, server logs) instead of removing it
#
# Modes. PostgreSQL (ALTER SYSTEM + pg_reload_conf() on the primary, checked with SHOW and
# pg_stat_replication.sync_state): async = synchronous_standby_names '' (synchronous_commit at its
# default, on); semi-sync = 'ANY 1 (s1, s2)' + synchronous_commit remote_write; sync =
# 'FIRST 2 (s1, s2)' + remote_apply. Scribe (all three nodes restarted on the same data, n1 with):
# async = --commit async; semi-sync = --commit semi-sync --sync-replicas "ANY 1 (*)"; sync =
# --commit sync --sync-replicas "FIRST 2 (n2, n3)".
#
# Method: one system at a time (the other is stopped), modes in MODES order. `pgbench -i -s SCALE`
# runs once per system, before its first mode (pgbench's own pre-run vacuum and truncation of
# pgbench_history happen before every TPC-B-like run); bench_insert is dropped and created afresh
# before every insert run. The raw pgbench outputs, replication samples taken during each run
# (PostgreSQL: pg_stat_replication and backends waiting in SyncRep every 0.5 s; Scribe: n1's
# /v1/status every second) and the server logs go to RESULTS; the table (with the machine's facts)
# goes to standard output and RESULTS/summary.md. Everything started is stopped and the temporary
# directory removed on exit, failure or Ctrl-C.
set -euo pipefail

START_DIR=$PWD
cd "$(dirname "$0")/.."
REPO=$PWD

RESULTS=${1:-${RESULTS:-bench-pg-results}}
case $RESULTS in /*) ;; *) RESULTS=$START_DIR/$RESULTS ;; esac
DURATION=${DURATION:-30}
DURATION=${DURATION%s}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
ONLY=${ONLY:-both}
MODES=${MODES:-async semi-sync sync}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=${PG_USER:-pgbench}
INIT_EACH_MODE=${INIT_EACH_MODE:-0}
PROGRESS=${PROGRESS:-5}
PGBENCH_ARGS=${PGBENCH_ARGS:-}
INIT_ARGS=${INIT_ARGS:-}
KEEP_TMP=${KEEP_TMP:-0}
INSERT_SQL=$REPO/scripts/pgbench/insert.sql
WORKLOADS=(tpcb insert)
BENCH_TABLE_DDL='CREATE TABLE bench_insert (id BIGSERIAL PRIMARY KEY, k BIGINT, v TEXT)'

exec 3>&2 # log and die write here, also from inside pollers whose own output is discarded
log() { echo "[bench-pg $(date +%T)] $*" >&3; }
die() { log "error: $*"; exit 1; }

[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a whole number of seconds, not '$DURATION'"
for v in CLIENTS JOBS SCALE PROGRESS; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"; done
case $ONLY in pg|scribe|both) ;; *) die "ONLY must be pg, scribe or both, not '$ONLY'" ;; esac
for m in $MODES; do case $m in async|semi-sync|sync) ;; *) die "unknown mode '$m' in MODES" ;; esac; done
[ -f "$INSERT_SQL" ] || die "missing $INSERT_SQL"
run_pg=0; run_scribe=0
[ "$ONLY" != scribe ] && run_pg=1
[ "$ONLY" != pg ] && run_scribe=1
PGBENCH=$PG_BIN/pgbench
PSQL=$PG_BIN/psql
for b in pgbench psql; do [ -x "$PG_BIN/$b" ] || die "no $PG_BIN/$b (set PG_BIN)"; done
if [ $run_pg = 1 ]; then
  for b in initdb pg_ctl pg_basebackup postgres; do [ -x "$PG_BIN/$b" ] || die "no $PG_BIN/$b (set PG_BIN)"; done
fi
command -v python3 >/dev/null || die "python3 is needed (free ports, JSON)"
[ $run_scribe = 0 ] || command -v curl >/dev/null || die "curl is needed"

if [ $run_scribe = 1 ]; then
  if [ -z "${SCRIBE_BIN:-}" ]; then
    log "building scribe (cargo build --release)"
    cargo build --release --quiet
    SCRIBE_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/scribe
  fi
  [ -x "$SCRIBE_BIN" ] || die "no scribe binary at $SCRIBE_BIN"
  "$SCRIBE_BIN" node --help 2>/dev/null | grep -qE -- '--pg[[:space:]<=]' \
    || die "$SCRIBE_BIN node has no --pg flag (the PostgreSQL front end is not in this build)"
fi

# --- Temporary directory, processes, cleanup ------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-pg.XXXXXX")
chmod 755 "$WORK"
mkdir -p "$RESULTS"
declare -A SCRIBE_PIDS=()
PG_DIRS=()        # data directories of running PostgreSQL servers, primary first
SAMPLER_PID=
CHILD_PID=        # the pgbench being waited for

if [ "$(id -u)" = 0 ]; then
  as_pg() { runuser -u "$PG_USER" -- "$@"; }
else
  as_pg() { "$@"; }
fi

pg_stop_all() {
  local d pid
  for d in "${PG_DIRS[@]}"; do
    as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -t 30 stop >/dev/null 2>&1 \
      || as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -t 10 stop >/dev/null 2>&1 || true
    if [ -f "$d/postmaster.pid" ]; then
      pid=$(head -1 "$d/postmaster.pid" 2>/dev/null || true)
      if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    fi
  done
  PG_DIRS=()
}

scribe_stop_all() {
  local name pid
  for name in n3 n2 n1; do # replicas first: the primary's last records need no waiting replica
    pid=${SCRIBE_PIDS[$name]:-}
    [ -n "$pid" ] || continue
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "SCRIBE_PIDS[$name]"
  done
}

stop_sampler() {
  if [ -n "$SAMPLER_PID" ]; then
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=
  fi
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$CHILD_PID" ]; then kill -INT "$CHILD_PID" 2>/dev/null; sleep 0.5; kill -KILL "$CHILD_PID" 2>/dev/null; fi
  stop_sampler
  scribe_stop_all
  pg_stop_all
  # Server logs are kept beside the results; the data directories are not.
  mkdir -p "$RESULTS/logs"
  find "$WORK" -maxdepth 2 -type f \( -name '*.log' -o -name '*.out' \) -exec cp {} "$RESULTS/logs/" \; 2>/dev/null
  if [ "$KEEP_TMP" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  case $rc in 0) ;; 130|143) log "interrupted; partial outputs and server logs are in $RESULTS" ;; *) log "failed (exit $rc); raw outputs and server logs are in $RESULTS" ;; esac
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Distinct free TCP ports on 127.0.0.1 (all held open while picking, so they differ).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds; 1 on timeout.
wait_until() {
  local secs=$1 what=$2
  shift 2
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "error: timed out after ${secs}s waiting for $what"
  return 1
}

# run_child OUT COMMAND...: runs COMMAND in the background with its output in OUT, and waits for
# it, so that a signal to this script is handled at once (cleanup stops the child).
run_child() {
  local out=$1 rc=0
  shift
  "$@" >> "$out" 2>&1 &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=
  return $rc
}

# --- Results --------------------------------------------------------------------------------------
declare -A TPS=() LAT=() FAIL=() CHECK=()
SETUP_FAILED=      # system/mode pairs that could not be set up

# record SYSTEM MODE WORKLOAD FILE RC: reads tps, latency average and failed transactions.
record() {
  local key="$1,$2,$3" file=$4 rc=$5 tps lat failed warnings
  tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$file" | tail -1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$file" | tail -1)
  failed=$(sed -n 's/^number of failed transactions: \(.*\)$/\1/p' "$file" | tail -1)
  [ -n "$failed" ] || failed="?"
  if grep -q 'Run was aborted' "$file"; then failed="$failed, run aborted"; fi
  # Server warnings (e.g. Scribe's "committed on the primary but not confirmed replicated in time")
  # do not fail a pgbench transaction, so they are counted here.
  warnings=$(grep -c '^WARNING:' "$file" || true)
  [ "$warnings" = 0 ] || failed="$failed, $warnings server warnings"
  if [ -z "$tps" ]; then
    TPS[$key]="error (rc $rc)"; LAT[$key]="-"; FAIL[$key]="see $(basename "$file")"
  else
    TPS[$key]=$(printf '%.1f' "$tps"); LAT[$key]=$(printf '%.2f' "${lat:-0}"); FAIL[$key]=$failed
    [ "$rc" = 0 ] || FAIL[$key]="$failed, rc $rc"
  fi
  log "$1 $2 $3: tps ${TPS[$key]}, latency ${LAT[$key]} ms, failed ${FAIL[$key]}"
}

# run_pgbench SYSTEM MODE WORKLOAD CONN...: one measured run, its output in RESULTS.
run_pgbench() {
  local sys=$1 mode=$2 wl=$3 rc=0 out
  shift 3
  out=$RESULTS/$sys-$mode-$wl.txt
  local args=(-c "$CLIENTS" -j "$JOBS" -T "$DURATION")
  [ "$PROGRESS" -gt 0 ] && args+=(-P "$PROGRESS")
  case $wl in
    tpcb) ;;
    insert) args+=(-n -f "$INSERT_SQL") ;;
  esac
  # shellcheck disable=SC2206
  local extra=($PGBENCH_ARGS)
  log "$sys $mode $wl: pgbench ${args[*]} ${extra[*]}"
  { echo "# $sys, mode $mode, workload $wl, $(date -Is)"; echo "# pgbench ${args[*]} ${extra[*]} $*"; } > "$out"
  run_child "$out" "$PGBENCH" "${args[@]}" "${extra[@]}" "$@" || rc=$?
  echo "# exit status $rc" >> "$out"
  record "$sys" "$mode" "$wl" "$out" "$rc"
}

# init_pgbench SYSTEM LABEL CONN...: pgbench -i -s SCALE; returns its exit status.
init_pgbench() {
  local sys=$1 label=$2 rc=0 out
  shift 2
  out=$RESULTS/$sys-init$label.txt
  # shellcheck disable=SC2206
  local extra=($INIT_ARGS)
  log "$sys: pgbench -i -s $SCALE ${extra[*]}"
  echo "# pgbench -i -s $SCALE ${extra[*]} $*" > "$out"
  run_child "$out" "$PGBENCH" -i -s "$SCALE" "${extra[@]}" "$@" || rc=$?
  [ $rc = 0 ] || log "$sys: pgbench -i failed (exit $rc), see $out"
  return $rc
}

# bench_system SYSTEM SET_MODE_FN SQL_FN SAMPLER_FN CONN...: every mode, both workloads.
bench_system() {
  local sys=$1 set_mode=$2 sql=$3 sampler=$4 mode wl first=1 init_ok=1 label
  shift 4
  for mode in $MODES; do
    if ! "$set_mode" "$mode"; then
      log "$sys: could not set up mode $mode; its runs are skipped"
      SETUP_FAILED="$SETUP_FAILED $sys/$mode"
      for wl in "${WORKLOADS[@]}"; do
        TPS[$sys,$mode,$wl]="setup failed"; LAT[$sys,$mode,$wl]="-"; FAIL[$sys,$mode,$wl]="-"
      done
      continue
    fi
    if [ $first = 1 ] || [ "$INIT_EACH_MODE" = 1 ]; then
      label=""; [ "$INIT_EACH_MODE" = 1 ] && label="-$mode"
      init_ok=1
      init_pgbench "$sys" "$label" "$@" || { init_ok=0; SETUP_FAILED="$SETUP_FAILED $sys/init"; }
      first=0
    fi
    for wl in "${WORKLOADS[@]}"; do
      if [ "$wl" = tpcb ] && [ $init_ok = 0 ]; then
        TPS[$sys,$mode,$wl]="init failed"; LAT[$sys,$mode,$wl]="-"; FAIL[$sys,$mode,$wl]="-"
        continue
      fi
      if [ "$wl" = insert ] && ! { "$sql" 'DROP TABLE IF EXISTS bench_insert' && "$sql" "$BENCH_TABLE_DDL"; }; then
        log "$sys: could not recreate bench_insert ($BENCH_TABLE_DDL)"
        TPS[$sys,$mode,$wl]="DDL failed"; LAT[$sys,$mode,$wl]="-"; FAIL[$sys,$mode,$wl]="-"
        continue
      fi
      "$sampler" "$RESULTS/$sys-$mode-$wl.replication.txt" &
      SAMPLER_PID=$!
      run_pgbench "$sys" "$mode" "$wl" "$@"
      stop_sampler
      CHECK[$sys,$mode,$wl]=$(summarise_samples "$sys" "$RESULTS/$sys-$mode-$wl.replication.txt")
    done
  done
}

# One line from a run's replication samples: the replica states seen (flagged when they differ
# from EXPECT_STATES, if set), and for PostgreSQL how often and how many backends were waiting
# for standbys (wait_event SyncRep).
EXPECT_STATES=
summarise_samples() {
  python3 - "$1" "$2" "$EXPECT_STATES" <<'EOF'
import sys
system, path, expect = sys.argv[1:4]
states, waiting, with_waiters, n = {}, 0, 0, 0
try:
    lines = [l.rstrip("\n") for l in open(path) if l.strip() and not l.startswith("#")]
except OSError:
    lines = []
for l in lines:
    parts = l.split("|")
    if len(parts) < 2:
        continue
    n += 1
    states[parts[1]] = states.get(parts[1], 0) + 1
    if system == "pg" and len(parts) > 2 and parts[2].isdigit():
        waiting = max(waiting, int(parts[2]))
        with_waiters += int(parts[2]) > 0
seen = "; ".join(f"{s} ({c}x)" for s, c in sorted(states.items(), key=lambda kv: -kv[1])) or "no samples"
if expect and set(states) != {expect}:
    seen += f" -- UNEXPECTED, wanted {expect}"
if system == "pg":
    seen += f"; backends waiting for standbys (SyncRep) in {with_waiters}/{n} samples, at most {waiting}"
print(seen)
EOF
}

# --- PostgreSQL -----------------------------------------------------------------------------------
PGDIR=$WORK/pg
pg_sql() { # SQL [DB]: on the primary, as postgres
  PGOPTIONS='-c client_min_messages=warning' \
    "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "${2:-bench}" -c "$1"
}
pg_streaming_count() {
  pg_sql "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" postgres
}
pg_two_streaming() { [ "$(pg_streaming_count)" = 2 ]; }

pg_setup() {
  read -r PG_PORT PG_PORT_S1 PG_PORT_S2 <<< "$(free_ports 3)"
  if [ "$(id -u)" = 0 ]; then
    if ! id -u "$PG_USER" >/dev/null 2>&1; then
      log "creating user $PG_USER to run PostgreSQL (it refuses to run as root)"
      useradd -m "$PG_USER"
    fi
  fi
  mkdir -p "$PGDIR"
  [ "$(id -u)" = 0 ] && chown "$PG_USER" "$PGDIR"
  log "PostgreSQL: initdb primary (port $PG_PORT)"
  as_pg "$PG_BIN/initdb" -D "$PGDIR/primary" -U postgres --auth=trust -E UTF8 --no-instructions \
    > "$PGDIR/initdb.log" 2>&1 || { cat "$PGDIR/initdb.log" >&2; die "initdb failed"; }
  as_pg tee -a "$PGDIR/primary/postgresql.conf" > /dev/null <<EOF

# bench-pg.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGDIR'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
fsync = on
synchronous_standby_names = ''
EOF
  as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/primary" -l "$PGDIR/pg-primary.log" -w -t 60 start > /dev/null \
    || die "the PostgreSQL primary did not start (see $RESULTS/logs/pg-primary.log)"
  PG_DIRS+=("$PGDIR/primary")
  pg_sql 'CREATE DATABASE bench' postgres
  local name port
  for name in s1 s2; do
    [ $name = s1 ] && port=$PG_PORT_S1 || port=$PG_PORT_S2
    log "PostgreSQL: standby $name (port $port) from pg_basebackup -R"
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$PGDIR/$name" \
      -R -X stream -C -S "$name" --checkpoint=fast > "$PGDIR/basebackup-$name.log" 2>&1 \
      || { cat "$PGDIR/basebackup-$name.log" >&2; die "pg_basebackup for $name failed"; }
    as_pg tee -a "$PGDIR/$name/postgresql.auto.conf" > /dev/null <<EOF
port = $port
primary_conninfo = 'host=127.0.0.1 port=$PG_PORT user=postgres application_name=$name'
primary_slot_name = '$name'
EOF
    as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/$name" -l "$PGDIR/pg-$name.log" -w -t 60 start > /dev/null \
      || die "standby $name did not start (see $RESULTS/logs/pg-$name.log)"
    PG_DIRS+=("$PGDIR/$name")
  done
  wait_until 60 "both PostgreSQL standbys streaming" pg_two_streaming || die "PostgreSQL standbys not streaming"
  log "PostgreSQL: s1 and s2 streaming"
}

PG_EXPECT=
pg_mode_took_effect() {
  local got
  got="$(pg_sql 'SHOW synchronous_standby_names' postgres)|$(pg_sql 'SHOW synchronous_commit' postgres)|$(pg_sql \
    "SELECT string_agg(application_name || ':' || state || ':' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication" postgres)"
  [ "$got" = "$PG_EXPECT" ]
}

pg_set_mode() {
  local names commit state
  case $1 in
    async) names=''; commit=on; state=async ;;
    semi-sync) names='ANY 1 (s1, s2)'; commit=remote_write; state=quorum ;;
    sync) names='FIRST 2 (s1, s2)'; commit=remote_apply; state=sync ;;
  esac
  log "PostgreSQL: mode $1: synchronous_standby_names '$names', synchronous_commit $commit"
  local set_commit="ALTER SYSTEM SET synchronous_commit = '$commit'"
  [ "$1" = async ] && set_commit='ALTER SYSTEM RESET synchronous_commit' # the default, on
  "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "ALTER SYSTEM SET synchronous_standby_names = '$names'" -c "$set_commit" \
    -c 'SELECT pg_reload_conf()' > /dev/null || return 1
  PG_EXPECT="$names|$commit|s1:streaming:$state,s2:streaming:$state"
  EXPECT_STATES="s1:streaming:$state,s2:streaming:$state"
  wait_until 30 "PostgreSQL mode $1 ($PG_EXPECT) to take effect" pg_mode_took_effect || return 1
  log "PostgreSQL: SHOW and pg_stat_replication agree: $PG_EXPECT"
}

pg_sampler() { # FILE: every 0.5 s on one connection, replication states and backends waiting for standbys
  echo "# time|standby:state:sync_state,...|backends waiting in SyncRep|standby=replay_lag,..." > "$1"
  exec timeout $((DURATION + 10)) "$PSQL" -X -q -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    >> "$1" 2>&1 <<'EOF'
SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS'),
  (SELECT string_agg(application_name || ':' || state || ':' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication),
  (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'),
  (SELECT string_agg(application_name || '=' || coalesce(replay_lag::text, '-'), ',' ORDER BY application_name) FROM pg_stat_replication)
\watch 0.5
EOF
}

pg_bench_sql() { pg_sql "$1" bench > /dev/null; }

bench_pg() {
  pg_setup
  bench_system pg pg_set_mode pg_bench_sql pg_sampler -h 127.0.0.1 -p "$PG_PORT" -U postgres bench
  pg_stop_all
}

# --- Scribe ---------------------------------------------------------------------------------------
SDIR=$WORK/scribe
scribe_status() { curl -sf --max-time 2 "http://127.0.0.1:$1/v1/status"; }
scribe_psql() { # SQL: on n1's pg port
  "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SC_PG1" -U scribe -d scribe -c "$1"
}
scribe_pg_ready() { scribe_psql 'SELECT 1'; }
SCRIBE_EXPECT=
# n1 is the primary with the expected commit settings and both replicas streaming.
scribe_ready() {
  scribe_status "$SC_HTTP1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
mode, sync_set = sys.argv[1].split("|")
c = s.get("commit") or {}
norm = lambda t: "".join(t.split()).lower()
states = {r.get("name"): r.get("state") for r in s.get("replicas", [])}
ok = (s.get("role") == "primary" and c.get("mode") == mode
      and (sync_set == "" or norm(c.get("sync_replicas", "")) == norm(sync_set))
      and states.get("n2") == "streaming" and states.get("n3") == "streaming")
sys.exit(0 if ok else 1)' "$SCRIBE_EXPECT"
}

# Fails the script at once, with the end of its log, when a started node has exited.
scribe_alive() {
  local name
  for name in "${!SCRIBE_PIDS[@]}"; do
    if ! kill -0 "${SCRIBE_PIDS[$name]}" 2>/dev/null; then
      tail -n 20 "$SDIR/scribe-$name.log" >&3 || true
      unset "SCRIBE_PIDS[$name]"
      log "error: Scribe node $name exited (log: $RESULTS/logs/scribe-$name.log)"
      SCRIBE_DEAD=1
      return 1
    fi
  done
}
SCRIBE_DEAD=
# Pollers for wait_until; a node that exited ends the wait at once (wait_until_alive).
scribe_up() { scribe_alive && scribe_status "$1"; }
scribe_all_ready() { scribe_alive && scribe_ready; }
scribe_pg_up() { scribe_alive && scribe_pg_ready; }
wait_until_alive() { # like wait_until, but gives up as soon as a Scribe node has exited
  local secs=$1 what=$2
  shift 2
  SCRIBE_DEAD=
  for _ in $(seq $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    [ -z "$SCRIBE_DEAD" ] || return 1
    sleep 0.2
  done
  log "error: timed out after ${secs}s waiting for $what"
  return 1
}

scribe_start_node() { # NAME HTTP PG [ARGS...]
  local name=$1 http=$2 pg=$3
  shift 3
  "$SCRIBE_BIN" node --name "$name" --data "$SDIR/$name" --http "127.0.0.1:$http" --pg "127.0.0.1:$pg" \
    --log warn "$@" >> "$SDIR/scribe-$name.out" 2>> "$SDIR/scribe-$name.log" &
  SCRIBE_PIDS[$name]=$!
}

scribe_set_mode() { # restarts n1, n2, n3 on the same data, n1 in this mode
  local args sync_set=''
  case $1 in
    async) args=(--commit async) ;;
    semi-sync) sync_set='ANY 1 (*)'; args=(--commit semi-sync --sync-replicas "$sync_set") ;;
    sync) sync_set='FIRST 2 (n2, n3)'; args=(--commit sync --sync-replicas "$sync_set") ;;
  esac
  scribe_stop_all
  EXPECT_STATES=
  log "Scribe: starting n1 ${args[*]}, then replicas n2, n3"
  scribe_start_node n1 "$SC_HTTP1" "$SC_PG1" --peer "127.0.0.1:$SC_PEER1" "${args[@]}"
  wait_until_alive 60 "Scribe n1 to answer /v1/status" scribe_up "$SC_HTTP1" || return 1
  scribe_start_node n2 "$SC_HTTP2" "$SC_PG2" --follow "127.0.0.1:$SC_PEER1"
  scribe_start_node n3 "$SC_HTTP3" "$SC_PG3" --follow "127.0.0.1:$SC_PEER1"
  SCRIBE_EXPECT="$1|$sync_set"
  wait_until_alive 120 "Scribe n1 ($SCRIBE_EXPECT) with n2 and n3 streaming" scribe_all_ready || return 1
  wait_until_alive 30 "Scribe's PostgreSQL port 127.0.0.1:$SC_PG1 to answer SELECT 1" scribe_pg_up || return 1
  log "Scribe: n1 is primary in mode $1${sync_set:+ ($sync_set)}, n2 and n3 streaming"
}

scribe_sampler() { # FILE: every second, the replicas' states as n1 sees them
  echo "# time|replica:state,...|commit mode" > "$1"
  local end=$((SECONDS + DURATION + 5))
  while [ $SECONDS -lt $end ]; do
    { scribe_status "$SC_HTTP1" | python3 -c '
import json, sys, time
s = json.load(sys.stdin)
r = ",".join("%s:%s" % (x.get("name"), x.get("state")) for x in sorted(s.get("replicas", []), key=lambda x: x.get("name", "")))
print("%s|%s|%s" % (time.strftime("%H:%M:%S"), r, (s.get("commit") or {}).get("mode")))'; } >> "$1" 2>&1 || true
    sleep 1
  done
}

scribe_bench_sql() { scribe_psql "$1" > /dev/null; }

bench_scribe() {
  read -r SC_HTTP1 SC_HTTP2 SC_HTTP3 SC_PEER1 SC_PG1 SC_PG2 SC_PG3 <<< "$(free_ports 7)"
  mkdir -p "$SDIR"
  bench_system scribe scribe_set_mode scribe_bench_sql scribe_sampler -h 127.0.0.1 -p "$SC_PG1" -U scribe scribe
  scribe_stop_all
}

# --- Run ------------------------------------------------------------------------------------------
log "results in $RESULTS; ${DURATION}s per run, $CLIENTS clients, $JOBS threads, scale $SCALE, modes: $MODES"
if [ $run_scribe = 1 ]; then bench_scribe; fi
if [ $run_pg = 1 ]; then bench_pg; fi

# --- Summary --------------------------------------------------------------------------------------
cell() { # ARRAY SYSTEM MODE WORKLOAD
  local -n arr=$1
  local key="$2,$3,$4"
  if [ -n "${arr[$key]+x}" ]; then echo "${arr[$key]}"; else echo "n/a"; fi
}
{
  echo "# pgbench: Scribe vs PostgreSQL 15, primary + 2 replicas on one machine"
  echo
  echo "- date: $(date -Is)"
  echo "- machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) memory, kernel $(uname -r)"
  echo "- run: ${DURATION}s per run, $CLIENTS clients, $JOBS threads, pgbench -i -s $SCALE${INIT_ARGS:+ $INIT_ARGS} $([ "$INIT_EACH_MODE" = 1 ] && echo 'before every mode' || echo 'once per system'), progress -P $PROGRESS${PGBENCH_ARGS:+, extra: $PGBENCH_ARGS}"
  echo "- data directories: under $(dirname "$WORK") ($(df -PT "$WORK" | awk 'NR == 2 {print $2 " on " $1}'); set TMPDIR to move them)"
  echo "- pgbench: $("$PGBENCH" --version)"
  [ $run_pg = 1 ] && echo "- PostgreSQL: $("$PG_BIN/postgres" --version), fsync on; async: synchronous_standby_names ''; semi-sync: 'ANY 1 (s1, s2)' + synchronous_commit remote_write; sync: 'FIRST 2 (s1, s2)' + remote_apply"
  [ $run_scribe = 1 ] && echo "- Scribe: $("$SCRIBE_BIN" --version 2>/dev/null || echo "$SCRIBE_BIN") ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ', uncommitted changes')); async: --commit async; semi-sync: --commit semi-sync --sync-replicas \"ANY 1 (*)\"; sync: --commit sync --sync-replicas \"FIRST 2 (n2, n3)\""
  echo "- workloads: tpcb = pgbench's built-in TPC-B-like script; insert = scripts/pgbench/insert.sql (one INSERT per transaction into bench_insert, recreated before each run)"
  echo "- tps excludes connection time; lat = pgbench's latency average; failed = pgbench's \"number of failed transactions\""
  echo
  echo "| workload | mode | Scribe tps | Scribe lat ms | Scribe failed | PostgreSQL tps | PostgreSQL lat ms | PostgreSQL failed |"
  echo "|---|---|---:|---:|---|---:|---:|---|"
  for wl in "${WORKLOADS[@]}"; do
    for mode in $MODES; do
      echo "| $wl | $mode | $(cell TPS scribe "$mode" "$wl") | $(cell LAT scribe "$mode" "$wl") | $(cell FAIL scribe "$mode" "$wl") | $(cell TPS pg "$mode" "$wl") | $(cell LAT pg "$mode" "$wl") | $(cell FAIL pg "$mode" "$wl") |"
    done
  done
  echo
  echo "Replication during each run (PostgreSQL sampled every 0.5 s, Scribe every second; raw: *.replication.txt):"
  echo
  for sys in scribe pg; do
    for wl in "${WORKLOADS[@]}"; do
      for mode in $MODES; do
        [ -n "${CHECK[$sys,$mode,$wl]+x}" ] && echo "- $sys $mode $wl: ${CHECK[$sys,$mode,$wl]}"
      done
    done
  done
  true
  if [ -n "$SETUP_FAILED" ]; then
    echo
    echo "Not set up (see the server logs in logs/):$SETUP_FAILED"
  fi
} > "$RESULTS/summary.md"
cat "$RESULTS/summary.md"
[ -z "$SETUP_FAILED" ] || die "some modes could not be set up:$SETUP_FAILED"
