#!/usr/bin/env bash
# Resharding costs on local PostgreSQL 15 servers (no Docker):
#  1. backfill throughput: `shardline-reshard start` (no proxy) moving about half of ROWS rows
#     of `items` from s0 to s1, against a raw `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe
#     of the same rows between the same two servers (text and binary format);
#  2. the cutover pause under write load: the proxy serves the source layout, `start --proxy`
#     turns dual writes on and copies, then pgbench writes single rows of `items` through the
#     proxy while `shardline-reshard cutover` runs; the printed pause, pgbench's tps, latency
#     and failures, and a check that no row was lost, duplicated or left on the wrong shard.
#
#   bash bench/reshard.sh
#
# Environment (defaults in brackets):
#   ROWS [500000]        rows of items on s0 (about half move)
#   BATCH [5000]         shardline-reshard start --batch
#   LAYOUT [hash]        hash: hash over [s0] -> hash over [s0, s1];
#                        range: one range on s0 -> split at ROWS/2, upper half to s1
#   CLIENTS [8]          pgbench clients through the proxy
#   SECS [20]            pgbench duration; the cutover starts after CUTOVER_AT [SECS/2] seconds
#   PGBENCH_MODE [simple] pgbench -M (simple, extended, prepared)
#   MAX_TRIES [1]        pgbench --max-tries (retries of serialization/deadlock failures)
#   CUTOVER_RUNS [1]     repeat the cutover measurement, each on fresh servers and tables
#   CUTOVER_TRIES [2]    attempts per run when cutover gives up (it asks to be run again)
#   MAX_PAUSE_MS []      cutover --max-pause-ms (default: shardline-reshard's own, 2000)
#   DURABLE [0]          1: keep fsync/synchronous_commit/full_page_writes on (default: off,
#                        like `shardline demo`)
#   PGBIN [/usr/lib/postgresql/15/bin]  where initdb and pg_ctl are
#   SHARDLINE_BIN_DIR [] use the shardline and shardline-reshard binaries in this directory
#                        instead of building (default: cargo build --release, target dir from
#                        cargo metadata, which honours CARGO_TARGET_DIR)
#   KEEP [0]             1: keep the temp dir (logs, configs, pgbench logs) for inspection
#
# Runs as a normal user, or as root (the servers then run as the `postgres` OS user).
# Progress goes to stderr, the table to stdout. Exits non-zero when a step fails or a check
# finds a wrong result.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${ROWS:-500000}
BATCH=${BATCH:-5000}
LAYOUT=${LAYOUT:-hash}
CLIENTS=${CLIENTS:-8}
SECS=${SECS:-20}
CUTOVER_AT=${CUTOVER_AT:-$((SECS / 2))}
PGBENCH_MODE=${PGBENCH_MODE:-simple}
MAX_TRIES=${MAX_TRIES:-1}
CUTOVER_RUNS=${CUTOVER_RUNS:-1}
CUTOVER_TRIES=${CUTOVER_TRIES:-2}
MAX_PAUSE_MS=${MAX_PAUSE_MS:-}
DURABLE=${DURABLE:-0}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
KEEP=${KEEP:-0}
export PGPASSWORD=app PGCONNECT_TIMEOUT=10

die() { echo "bench/reshard.sh: error: $*" >&2; exit 1; }
log() { echo "[$(date +%T)] $*" >&2; }
PROBLEMS=()
problem() { echo "bench/reshard.sh: PROBLEM: $*" >&2; PROBLEMS+=("$*"); }

# ---------------------------------------------------------------------------------------------
# Preconditions
[[ $ROWS =~ ^[0-9]+$ && $ROWS -ge 1000 ]] || die "ROWS must be a number >= 1000 (got '$ROWS')"
[[ $LAYOUT == hash || $LAYOUT == range ]] || die "LAYOUT must be hash or range (got '$LAYOUT')"
[[ $SECS =~ ^[0-9]+$ && $CUTOVER_AT =~ ^[0-9]+$ && $CUTOVER_AT -lt $SECS ]] \
  || die "need CUTOVER_AT < SECS (got CUTOVER_AT=$CUTOVER_AT SECS=$SECS)"
for tool in "$PGBIN/initdb" "$PGBIN/pg_ctl"; do
  [ -x "$tool" ] || die "$tool not found; install PostgreSQL 15 server binaries or set PGBIN"
done
SHARDLINE_BIN_DIR=${SHARDLINE_BIN_DIR:-}
for tool in psql pgbench python3 $([ -n "$SHARDLINE_BIN_DIR" ] || echo cargo); do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH"
done
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  id -u postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' OS user to run the servers"
  command -v runuser >/dev/null 2>&1 || die "running as root needs runuser (util-linux)"
  AS_PG=(runuser -u postgres --)
fi

# ---------------------------------------------------------------------------------------------
# Build
if [ -n "$SHARDLINE_BIN_DIR" ]; then
  BIN_DIR=$SHARDLINE_BIN_DIR
  log "using the binaries in $BIN_DIR (no build)"
else
  log "building release binaries"
  cargo build --release --quiet -p shardline -p shardline-resharder \
    || die "cargo build --release -p shardline -p shardline-resharder failed"
  BIN_DIR=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release
fi
PROXY_BIN=$BIN_DIR/shardline
RESHARD_BIN=$BIN_DIR/shardline-reshard
[ -x "$PROXY_BIN" ] && [ -x "$RESHARD_BIN" ] || die "shardline and shardline-reshard not found (executable) in $BIN_DIR"

# ---------------------------------------------------------------------------------------------
# Temp dir, servers, cleanup
DIR=$(mktemp -d "${TMPDIR:-/tmp}/shardline-reshard-bench.XXXXXX")
chmod 755 "$DIR"
[ ${#AS_PG[@]} -gt 0 ] && chown postgres: "$DIR"
PG_DIRS=()
PROXY_PID=
PGBENCH_PID=

cleanup() {
  local rc=$?
  set +e
  if [ -n "$PGBENCH_PID" ]; then kill "$PGBENCH_PID" 2>/dev/null; wait "$PGBENCH_PID" 2>/dev/null; fi
  stop_proxy
  for d in "${PG_DIRS[@]}"; do
    (cd "$DIR" && "${AS_PG[@]}" "$PGBIN/pg_ctl" stop -D "$d" -m immediate -s >/dev/null 2>&1)
  done
  if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then
    [ "$KEEP" = 1 ] || rm -rf "${PG_DIRS[@]}" 2>/dev/null
    echo "bench/reshard.sh: logs and configs kept in $DIR" >&2
  else
    rm -rf "$DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_proxy() {
  [ -n "$PROXY_PID" ] || return 0
  kill -TERM "$PROXY_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PROXY_PID" 2>/dev/null || true
  wait "$PROXY_PID" 2>/dev/null || true
  PROXY_PID=
}

# free_ports N: N distinct free loopback TCP ports, held open together while picked.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start_pg NAME PORT: initdb + pg_ctl start in $DIR/NAME, role and database app.
start_pg() {
  local data=$DIR/$1 port=$2 opts
  opts="-p $port -k '$DIR' -c listen_addresses=127.0.0.1 -c max_connections=200 \
    -c max_prepared_transactions=100 -c shared_buffers=256MB"
  [ "$DURABLE" = 1 ] || opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  (cd "$DIR" && "${AS_PG[@]}" "$PGBIN/initdb" -D "$data" -U postgres -A trust --no-locale -E UTF8 \
    --no-sync >"$DIR/$1.initdb.log" 2>&1) || { cat "$DIR/$1.initdb.log" >&2; die "initdb of $1 failed"; }
  printf '%s\n' "local all all trust" "host all all 127.0.0.1/32 trust" "host all all ::1/128 trust" \
    >"$data/pg_hba.conf"
  PG_DIRS+=("$data")
  (cd "$DIR" && "${AS_PG[@]}" "$PGBIN/pg_ctl" start -D "$data" -l "$DIR/$1.log" -w -s -t 60 -o "$opts") \
    || { tail -20 "$DIR/$1.log" >&2; die "pg_ctl start of $1 on port $port failed"; }
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN SUPERUSER PASSWORD 'app'" -c "CREATE DATABASE app OWNER app" >/dev/null \
    || die "creating role/database app on $1 (port $port) failed"
}

stop_pg() { # NAME
  local data=$DIR/$1
  (cd "$DIR" && "${AS_PG[@]}" "$PGBIN/pg_ctl" stop -D "$data" -m fast -s >/dev/null 2>&1) || true
  rm -rf "$data"
  local kept=()
  for d in "${PG_DIRS[@]}"; do [ "$d" = "$data" ] || kept+=("$d"); done
  PG_DIRS=("${kept[@]+"${kept[@]}"}")
}

q() { # PORT SQL: one value
  psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app -d app -c "$2"
}

now_ns() { date +%s%N; }
secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
rate() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? r / s : 0) }'; }

ITEMS_COLUMNS="(id bigint PRIMARY KEY, owner int NOT NULL, val bigint NOT NULL, note text)"

# Layouts and the SQL predicate of the rows that move from s0 to s1.
SPLIT=$((ROWS / 2 + 1))
if [ "$LAYOUT" = hash ]; then
  SOURCE_RULE="{name: items, sharding: hash, column: id, type: int8, shards: [s0]}"
  TARGET_RULE="{name: items, sharding: hash, column: id, type: int8, shards: [s0, s1]}"
  # shardline's hash placement is PostgreSQL's PARTITION BY HASH; remainder 1 of 2 is s1.
  MOVING="satisfies_hash_partition('bench_hash_probe'::regclass, 2, 1, id)"
  PROBE_DDL="CREATE TABLE IF NOT EXISTS bench_hash_probe (id bigint) PARTITION BY HASH (id)"
else
  SOURCE_RULE="{name: items, sharding: range, column: id, type: int8, ranges: [{shard: s0}]}"
  TARGET_RULE="{name: items, sharding: range, column: id, type: int8, ranges: [{to: $SPLIT, shard: s0}, {from: $SPLIT, shard: s1}]}"
  MOVING="id >= $SPLIT"
  PROBE_DDL="SELECT 1"
fi

write_config() { # FILE PROXY_PORT S0_PORT S1_PORT RULE
  cat >"$1" <<YAML
listen: 127.0.0.1:$2
shutdown_grace_s: 2
users:
  - {name: app, password: app}
  - {name: admin, password: admin, admin: true}
shards:
  - {name: s0, host: 127.0.0.1, port: $3, database: app}
  - {name: s1, host: 127.0.0.1, port: $4, database: app}
default_shard: s0
tables:
  - $5
YAML
}

load_items() { # PORT
  q "$1" "CREATE TABLE items $ITEMS_COLUMNS;
          INSERT INTO items SELECT g, g % 1000, 0, md5(g::text) FROM generate_series(1, $ROWS) g;
          $PROBE_DDL" >/dev/null
  # Vacuumed so the first reader does not pay for setting hint bits.
  q "$1" "VACUUM ANALYZE items" >/dev/null
}

# run_step LOG CMD...: runs a shardline binary, output in LOG; on failure shows it and dies.
run_step() {
  local out=$1; shift
  if ! "$@" >"$out" 2>&1; then
    echo "---- command: $*" >&2
    cat "$out" >&2
    die "the command above failed (exit status shown in its output, log $out)"
  fi
}

RESULTS=()
row() { RESULTS+=("$(printf "%-47s %9s %9s   %s" "$1" "$2" "$3" "$4")"); }

# ---------------------------------------------------------------------------------------------
# 1. Backfill throughput vs a raw COPY pipe
read -r A0 A1 APROXY <<<"$(free_ports 3)"
log "phase 1: starting PostgreSQL servers a0 (:$A0) and a1 (:$A1) in $DIR"
start_pg a0 "$A0"
start_pg a1 "$A1"
log "loading $ROWS rows into items on a0"
load_items "$A0"
MOVING_ROWS=$(q "$A0" "SELECT count(*) FROM items WHERE $MOVING")
log "$MOVING_ROWS rows move to s1 ($LAYOUT layout)"
mkdir -p "$DIR/p1"
write_config "$DIR/p1/from.yaml" "$APROXY" "$A0" "$A1" "$SOURCE_RULE"
write_config "$DIR/p1/to.yaml" "$APROXY" "$A0" "$A1" "$TARGET_RULE"

run_step "$DIR/p1/plan.log" "$RESHARD_BIN" plan --from "$DIR/p1/from.yaml" --to "$DIR/p1/to.yaml"
log "shardline-reshard start --batch $BATCH (no proxy)"
t0=$(now_ns)
run_step "$DIR/p1/start.log" "$RESHARD_BIN" start --from "$DIR/p1/from.yaml" --to "$DIR/p1/to.yaml" --batch "$BATCH"
T_START=$(secs_since "$t0")
COPIED=$(sed -n 's/.*backfill done (\([0-9]*\) rows copied.*/\1/p' "$DIR/p1/start.log" | tail -1)
ON_S1=$(q "$A1" "SELECT count(*) FROM items")
[ "$COPIED" = "$MOVING_ROWS" ] || problem "start reported '${COPIED:-nothing}' rows copied, expected $MOVING_ROWS (output in $DIR/p1/start.log)"
[ "$ON_S1" = "$MOVING_ROWS" ] || problem "after start, s1 holds $ON_S1 rows of items, expected $MOVING_ROWS"
WRONG=$(q "$A1" "$PROBE_DDL; SELECT count(*) FROM items WHERE NOT ($MOVING)" | tail -1)
[ "$WRONG" = 0 ] || problem "after start, s1 holds $WRONG rows that do not move there"
row "shardline-reshard start (backfill)" "$ON_S1" "$T_START" "$(rate "$ON_S1" "$T_START")"

copy_pipe() { # TABLE FORMAT-OPTION -> seconds
  q "$A1" "CREATE TABLE $1 $ITEMS_COLUMNS" >/dev/null
  local t0 rc=0
  t0=$(now_ns)
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$A0" -U app -d app \
      -c "COPY (SELECT * FROM items WHERE $MOVING) TO STDOUT $2" \
    | psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$A1" -U app -d app -c "COPY $1 FROM STDIN $2" \
    || rc=$?
  [ "$rc" = 0 ] || die "the COPY pipe into $1 failed"
  secs_since "$t0"
}
log "COPY pipe a0 -> a1 (text)"
T_COPY=$(copy_pipe items_copy "")
N_COPY=$(q "$A1" "SELECT count(*) FROM items_copy")
[ "$N_COPY" = "$MOVING_ROWS" ] || problem "the text COPY pipe moved $N_COPY rows, expected $MOVING_ROWS"
row "COPY TO STDOUT | COPY FROM STDIN (text)" "$N_COPY" "$T_COPY" "$(rate "$N_COPY" "$T_COPY")"
log "COPY pipe a0 -> a1 (binary)"
T_BIN=$(copy_pipe items_copy_bin "(FORMAT binary)")
N_BIN=$(q "$A1" "SELECT count(*) FROM items_copy_bin")
[ "$N_BIN" = "$MOVING_ROWS" ] || problem "the binary COPY pipe moved $N_BIN rows, expected $MOVING_ROWS"
row "COPY TO STDOUT | COPY FROM STDIN (binary)" "$N_BIN" "$T_BIN" "$(rate "$N_BIN" "$T_BIN")"
stop_pg a0
stop_pg a1

# ---------------------------------------------------------------------------------------------
# 2. Cutover pause under pgbench writes through the proxy
cat >"$DIR/writes.sql" <<'SQL'
\set id random(1, :rows)
UPDATE items SET val = val + 1 WHERE id = :id;
INSERT INTO items (id, owner, val, note) VALUES (:id, 0, 1, 'bench') ON CONFLICT (id) DO UPDATE SET val = items.val + 1;
SQL
PGBENCH_EXTRA=()
if pgbench --help 2>&1 | grep -q -- '--max-tries'; then PGBENCH_EXTRA+=(--max-tries="$MAX_TRIES"); fi

cutover_run() { # RUN-NUMBER
  local n=$1 d=$DIR/p2-$1 b0 b1 pp out
  mkdir -p "$d"
  read -r b0 b1 pp <<<"$(free_ports 3)"
  log "phase 2 run $n: starting PostgreSQL servers b0 (:$b0) and b1 (:$b1)"
  start_pg "b0-$n" "$b0"
  start_pg "b1-$n" "$b1"
  load_items "$b0"
  write_config "$d/from.yaml" "$pp" "$b0" "$b1" "$SOURCE_RULE"
  write_config "$d/to.yaml" "$pp" "$b0" "$b1" "$TARGET_RULE"
  cp "$d/from.yaml" "$d/shards.yaml"
  local admin=127.0.0.1:$pp steps=(--from "$d/from.yaml" --to "$d/to.yaml")

  log "starting shardline on 127.0.0.1:$pp"
  "$PROXY_BIN" --config "$d/shards.yaml" --no-watch >"$d/proxy.log" 2>&1 &
  PROXY_PID=$!
  local ok=
  for _ in $(seq 1 100); do
    kill -0 "$PROXY_PID" 2>/dev/null || { cat "$d/proxy.log" >&2; die "shardline exited at startup"; }
    if psql -X -q -At -h 127.0.0.1 -p "$pp" -U app -d app -c "SELECT 1" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { cat "$d/proxy.log" >&2; die "shardline did not accept connections on $pp within 20 s"; }

  log "shardline-reshard start --proxy $admin --batch $BATCH"
  local t0 secs copied
  t0=$(now_ns)
  run_step "$d/start.log" "$RESHARD_BIN" start "${steps[@]}" --proxy "$admin" --batch "$BATCH"
  secs=$(secs_since "$t0")
  copied=$(q "$b1" "SELECT count(*) FROM items")
  row "start --proxy (backfill, dual writes on)" "$copied" "$secs" "$(rate "$copied" "$secs")"

  log "shardline-reshard verify"
  t0=$(now_ns)
  run_step "$d/verify.log" "$RESHARD_BIN" verify "${steps[@]}"
  secs=$(secs_since "$t0")
  row "verify (idle, row by row, all moving rows)" "$copied" "$secs" "$(rate "$copied" "$secs")"
  grep -q "^0 rows repaired" "$d/verify.log" \
    || problem "verify after an idle backfill repaired rows: $(tail -1 "$d/verify.log") (see $d/verify.log)"

  log "pgbench: $CLIENTS clients, ${SECS}s, -M $PGBENCH_MODE through the proxy; cutover after ${CUTOVER_AT}s"
  (cd "$d" && exec pgbench -n -h 127.0.0.1 -p "$pp" -U app -c "$CLIENTS" -j 2 -T "$SECS" \
    -M "$PGBENCH_MODE" -P 1 -l --log-prefix=pgbench_log -D rows="$ROWS" -f "$DIR/writes.sql" \
    "${PGBENCH_EXTRA[@]+"${PGBENCH_EXTRA[@]}"}" app >"$d/pgbench.out" 2>"$d/pgbench.err") &
  PGBENCH_PID=$!
  sleep "$CUTOVER_AT" & wait $!  # (a background sleep lets INT/TERM interrupt the wait)
  kill -0 "$PGBENCH_PID" 2>/dev/null || { cat "$d/pgbench.err" >&2; die "pgbench ended before the cutover"; }
  # A cutover that would hold writes past --max-pause-ms gives up, resumes the old routing and
  # asks to be run again: retried (while pgbench runs) up to CUTOVER_TRIES times, and every
  # give-up is reported.
  local try=0 cut_rc=1 cut_secs=- gaveup=() cmd=("$RESHARD_BIN" cutover "${steps[@]}" --proxy "$admin")
  [ -z "$MAX_PAUSE_MS" ] || cmd+=(--max-pause-ms "$MAX_PAUSE_MS")
  while [ "$try" -lt "$CUTOVER_TRIES" ] && kill -0 "$PGBENCH_PID" 2>/dev/null; do
    try=$((try + 1))
    log "shardline-reshard cutover --proxy $admin${MAX_PAUSE_MS:+ --max-pause-ms $MAX_PAUSE_MS} (attempt $try)"
    cut_rc=0
    t0=$(now_ns)
    "${cmd[@]}" >"$d/cutover.$try.log" 2>&1 || cut_rc=$?
    cut_secs=$(secs_since "$t0")
    [ "$cut_rc" = 0 ] && break
    echo "---- command: ${cmd[*]}  (exit status $cut_rc)" >&2
    cat "$d/cutover.$try.log" >&2
    gaveup+=("$(sed -n 's/.*gave up after \([0-9]*\) ms.*/\1 ms/p' "$d/cutover.$try.log" | grep . || echo "exit $cut_rc")")
    problem "cutover attempt $try failed: $(grep '^shardline-reshard:' "$d/cutover.$try.log" | tail -1)"
  done
  local pg_rc=0
  wait "$PGBENCH_PID" || pg_rc=$?
  PGBENCH_PID=
  local paused= cut_log=$d/cutover.$try.log
  if [ "$cut_rc" = 0 ]; then
    paused=$(sed -n 's/.*paused for \([0-9]*\) ms.*/\1/p' "$cut_log" | tail -1)
    [ -n "$paused" ] || problem "cutover printed no pause: $(cat "$cut_log")"
    grep -q "0 rows needed repair" "$cut_log" \
      || problem "cutover's final check repaired rows: $(grep -h "repair" "$cut_log" | tr '\n' ' ')"
  else
    problem "no cutover succeeded in $try attempt(s) while pgbench ran (logs $d/cutover.*.log)"
  fi
  local outcome
  if [ "$cut_rc" = 0 ]; then outcome="${paused:-?} ms paused"; else outcome="NO CUTOVER"; fi
  [ ${#gaveup[@]} -eq 0 ] || outcome="$outcome (gave up ${#gaveup[@]}x first, writes held $(printf '%s, ' "${gaveup[@]}" | sed 's/, $//'))"

  # pgbench results
  local txs tps lat_avg lat_std failed retried aborted lat_max lat_p99 min_tps
  txs=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$d/pgbench.out")
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$d/pgbench.out" | head -1)
  lat_avg=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$d/pgbench.out")
  lat_std=$(sed -n 's/^latency stddev = \([0-9.]*\) ms.*/\1/p' "$d/pgbench.out")
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$d/pgbench.out")
  retried=$(sed -n 's/^number of transactions retried: \([0-9]*\).*/\1/p' "$d/pgbench.out")
  aborted=$(grep -c "aborted in command" "$d/pgbench.err" || true)
  lat_max=$(cat "$d"/pgbench_log.* 2>/dev/null | awk '$3 > m { m = $3 } END { printf "%.1f", m / 1000 }')
  lat_p99=$(cat "$d"/pgbench_log.* 2>/dev/null | awk '{ print $3 }' | sort -n \
    | awk '{ a[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; if (NR) printf "%.1f", a[i] / 1000 }')
  min_tps=$(awk '/^progress:/ { t = $4 + 0; if (n++ == 0 || t < m) m = t } END { printf "%.0f", m }' "$d/pgbench.err")
  if [ "$pg_rc" != 0 ] || [ "${aborted:-0}" != 0 ]; then
    echo "---- pgbench stderr (last 20 lines):" >&2
    grep -v '^progress:' "$d/pgbench.err" | tail -20 >&2
    problem "pgbench exited with status $pg_rc and $aborted aborted clients (see $d/pgbench.err)"
  fi
  [ -n "$txs" ] || die "could not read pgbench's results from $d/pgbench.out"
  row "cutover pause under pgbench ($CLIENTS cl.)" "-" "$cut_secs" \
    "$outcome, $(printf '%.0f' "${tps:-0}") tps, ${failed:-0} failed, $aborted aborted clients${retried:+, $retried retried}"
  row "  pgbench latency (ms)" "-" "-" \
    "avg ${lat_avg:-?}, stddev ${lat_std:-?}, p99 ${lat_p99:-?}, max ${lat_max:-?}; lowest 1-s tps $min_tps"

  # Every pgbench transaction adds 1 twice (UPDATE, upsert) to val, which started at 0.
  local expect=$((2 * txs)) on0 on1 bad0 bad1 via_proxy sum_val deleted
  if [ "$cut_rc" = 0 ]; then
    # Finish the migration as an operator would, then check every row.
    log "installing the target layout on the proxy (admin RELOAD), then cleanup"
    cp "$d/to.yaml" "$d/shards.yaml.new" && mv "$d/shards.yaml.new" "$d/shards.yaml"
    psql -X -q -v ON_ERROR_STOP=1 "postgres://admin:admin@127.0.0.1:$pp/shardline" -c "RELOAD" >"$d/reload.log" 2>&1 \
      || problem "admin RELOAD of the target layout failed: $(cat "$d/reload.log")"
    t0=$(now_ns)
    run_step "$d/cleanup.log" "$RESHARD_BIN" cleanup "${steps[@]}" --batch "$BATCH"
    secs=$(secs_since "$t0")
    deleted=$(sed -n 's/.*done: \([0-9]*\) moved rows deleted.*/\1/p' "$d/cleanup.log")
    row "cleanup (delete moved rows from s0)" "${deleted:-?}" "$secs" "$(rate "${deleted:-0}" "$secs")"

    on0=$(q "$b0" "SELECT count(*) FROM items")
    on1=$(q "$b1" "SELECT count(*) FROM items")
    bad0=$(q "$b0" "SELECT count(*) FROM items WHERE $MOVING")
    bad1=$(q "$b1" "$PROBE_DDL; SELECT count(*) FROM items WHERE NOT ($MOVING)" | tail -1)
    via_proxy=$(psql -X -q -At -h 127.0.0.1 -p "$pp" -U app -d app -c "SELECT count(*) FROM items" 2>&1) || true
    sum_val=$(( $(q "$b0" "SELECT coalesce(sum(val), 0) FROM items") + $(q "$b1" "SELECT coalesce(sum(val), 0) FROM items") ))
    [ "$((on0 + on1))" = "$ROWS" ] || problem "after cleanup s0+s1 hold $on0+$on1 rows, expected $ROWS"
    [ "$bad0" = 0 ] && [ "$bad1" = 0 ] || problem "after cleanup, rows on the wrong shard: $bad0 on s0, $bad1 on s1"
    [ "$via_proxy" = "$ROWS" ] || problem "SELECT count(*) FROM items through the proxy returned '$via_proxy', expected $ROWS"
    [ "$sum_val" = "$expect" ] \
      || problem "sum(val) is $sum_val but pgbench acknowledged $txs transactions (expected $expect): writes lost or doubled"
    row "  rows after cleanup (s0 + s1 = total)" "$((on0 + on1))" "-" \
      "$on0 + $on1, wrong shard: $((bad0 + bad1)), sum(val) $sum_val vs 2 x $txs acked"
  else
    # No cutover: s0 still owns every row and must hold every acknowledged write.
    on0=$(q "$b0" "SELECT count(*) FROM items")
    sum_val=$(q "$b0" "SELECT coalesce(sum(val), 0) FROM items")
    [ "$on0" = "$ROWS" ] || problem "without cutover s0 holds $on0 rows, expected $ROWS"
    [ "$sum_val" = "$expect" ] \
      || problem "sum(val) on s0 is $sum_val but pgbench acknowledged $txs transactions (expected $expect)"
    row "  rows on s0 (no cutover, s0 owns all)" "$on0" "-" "sum(val) $sum_val vs 2 x $txs acked"
  fi

  stop_proxy
  stop_pg "b0-$n"
  stop_pg "b1-$n"
}

for n in $(seq 1 "$CUTOVER_RUNS"); do cutover_run "$n"; done

# ---------------------------------------------------------------------------------------------
echo
echo "shardline resharding bench: $ROWS rows, $LAYOUT layout s0 -> s0+s1, batch $BATCH, $(nproc) cores, fsync $([ "$DURABLE" = 1 ] && echo on || echo off)"
printf "%-47s %9s %9s   %s\n" what rows seconds rows/s
printf '%s\n' "${RESULTS[@]}"
echo "(start reads all $ROWS rows of s0 in key order, FOR SHARE, to pick the moving ones and"
echo " upserts them as JSON row images; the COPY pipes read only the moving rows.)"
if [ ${#PROBLEMS[@]} -gt 0 ]; then
  echo
  echo "PROBLEMS:"
  printf '  - %s\n' "${PROBLEMS[@]}"
  exit 1
fi
