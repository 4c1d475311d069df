#!/usr/bin/env bash
# Instructions the proxy executes per single-shard transaction, counted by valgrind's callgrind.
# The count does not depend on the machine's load, so a change of a few percent shows here
# while pgbench's TPS and CPU figures (bench/pgbench_proxy.sh) lose it in the noise.
#
# Starts the demo cluster, then runs shardline under callgrind on the demo's shards.yaml (on
# another port) and, for reference, the floor relay (proxy/examples/floor_relay.rs: tokio
# copying bytes between each client and shard 0, parsing nothing) and PgBouncer when it is
# installed (transaction pooling in front of shard 0, as bench/pgbench_proxy.sh runs it).
# pgbench runs the same single-row read through each in simple, extended and prepared mode
# (4 clients; PgBouncer before 1.21 has no prepared mode); each mode is warmed up first (pools
# filled, statements prepared), then counted. Logging in to shards (SCRAM's key derivation,
# for a pool's new connection or a health probe) is left out.
#
#   bash bench/instructions.sh [transactions per client, default 1000]
#
# Needs valgrind (apt install valgrind). TOP=n also prints the n functions with the most
# instructions per transaction (inclusive) in simple mode (TOP_MODE=extended or prepared for
# the others), for finding where they go. THREADS=n sets the counted shardline's serving threads;
# SHARDLINE_BIN=path counts another build (a profile-guided one, the commit before a change).
set -euo pipefail
cd "$(dirname "$0")/.."
TX=${1:-1000}
CLIENTS=4
PORT=${BENCH_PORT:-16832}
DIR=$(mktemp -d /tmp/shardline-instructions.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt install valgrind)"; exit 1; }

cargo build --release --quiet --example floor_relay
FLOOR_BIN=${CARGO_TARGET_DIR:-target}/release/examples/floor_relay
# shellcheck source=bench/demo.sh
. bench/demo.sh
COUNTED=()
cleanup() {
  for pid in "${COUNTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${COUNTED[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_demo
}
trap cleanup EXIT
# shellcheck source=bench/select_load.sh
. bench/select_load.sh

# Starts "$@" under callgrind, writing to $DIR/$NAME.out*; sets COUNTED_PID. AS, an array,
# prefixes valgrind (to run it as another user); callgrind_control runs the same way.
AS=()
start_counted() { # NAME PORT COMMAND...
  local name=$1 port=$2
  shift 2
  "${AS[@]}" valgrind --tool=callgrind --callgrind-out-file="$DIR/$name.out" "$@" >"$DIR/$name.log" 2>&1 &
  COUNTED_PID=$!
  COUNTED+=("$COUNTED_PID")
  for _ in $(seq 1 240); do
    psql -X -q -h 127.0.0.1 -p "$port" -U app app -c "SELECT 1" >/dev/null 2>&1 && return
    sleep 0.5
  done
  echo "$name did not start under valgrind:"
  tail -5 "$DIR/$name.log"
  exit 1
}

run_pgbench() { # PORT MODE TRANSACTIONS
  pgbench -n -h 127.0.0.1 -p "$1" -U app -c "$CLIENTS" -j 1 -t "$3" -M "$2" \
    -f "$DIR/select.sql" app >"$DIR/pgbench.out" 2>&1 || { cat "$DIR/pgbench.out"; exit 1; }
}

# Instructions per transaction of PID for MODE through PORT (the dump's total, less the
# opening of shard connections).
count() { # NAME PID PORT MODE [AS...]
  local name=$1 pid=$2 port=$3 mode=$4 before dump total opening
  shift 4
  run_pgbench "$port" "$mode" 300
  before=$(find "$DIR" -name "$name.out.*" | wc -l)
  "$@" callgrind_control -z "$pid" >/dev/null 2>&1
  run_pgbench "$port" "$mode" "$TX"
  "$@" callgrind_control -d "$pid" >/dev/null 2>&1
  for _ in $(seq 1 60); do
    [ "$(find "$DIR" -name "$name.out.*" | wc -l)" -gt "$before" ] && break
    sleep 0.5
  done
  dump=$(ls -t "$DIR/$name".out.* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  # Logins to shards (pool fills, health probes) are dominated by SCRAM's key derivation,
  # PBKDF2 over SHA-256 (whose callers a profile-guided build may inline: the rounds are
  # counted where they are done).
  opening=$(callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
    awk '/sasl::hi( |$)|sha2::sha256::compress256( |$)/ {gsub(",", "", $1); print $1; exit}')
  echo "$dump" >"$DIR/$name.last"
  awk -v t="$total" -v o="${opening:-0}" -v n="$((TX * CLIENTS))" 'BEGIN {printf "%.0f", (t - o) / n}'
}

sed -e "s/^listen: .*/listen: 127.0.0.1:$((PORT + 300))/" -e '/^metrics_listen/d' \
  "$DIR/shards.yaml" >"$DIR/counted.yaml"
start_counted shardline $((PORT + 300)) "$BIN" ${THREADS:+--threads "$THREADS"} \
  --config "$DIR/counted.yaml" --no-watch
SHARDLINE_PID=$COUNTED_PID
start_counted floor $((PORT + 301)) "$FLOOR_BIN" 127.0.0.1:$((PORT + 301)) 127.0.0.1:$((PORT + 1))
FLOOR_PID=$COUNTED_PID

SHARD0=$((PORT + 1))
PGB_PORT=$((PORT + 302))
PGB_CONFIG_ONLY=1
# shellcheck source=bench/pgbouncer.sh
. bench/pgbouncer.sh
PGB_PID=
# As root, PgBouncer runs as the postgres user (through setpriv); without either, no column.
if command -v pgbouncer >/dev/null 2>&1 &&
  { [ "$(id -u)" != 0 ] || { id postgres >/dev/null 2>&1 && command -v setpriv >/dev/null; }; }; then
  pgbouncer_config
  AS=("${AS_PGBOUNCER_USER[@]}")
  start_counted pgb "$PGB_PORT" pgbouncer "$DIR/pgbouncer.ini"
  PGB_PID=$COUNTED_PID
  AS=()
fi

printf "%-9s %12s %12s %12s %10s %10s\n" mode "shardline" "floor relay" "pgbouncer" "/floor" "/pgbouncer"
for mode in simple extended prepared; do
  ours=$(count shardline "$SHARDLINE_PID" $((PORT + 300)) "$mode")
  [ "$mode" = "${TOP_MODE:-simple}" ] && TOP_DUMP=$(cat "$DIR/shardline.last")
  floor=$(count floor "$FLOOR_PID" $((PORT + 301)) "$mode")
  pgb=0
  if [ -n "$PGB_PID" ] && [ "$mode" != prepared ]; then
    pgb=$(count pgb "$PGB_PID" "$PGB_PORT" "$mode" "${AS_PGBOUNCER_USER[@]}")
  fi
  awk -v m="$mode" -v o="$ours" -v f="$floor" -v g="$pgb" 'BEGIN {
    printf "%-9s %12d %12d %12s %10.2f %10s\n", m, o, f, (g > 0 ? g : "-"), (f > 0 ? o / f : 0),
      (g > 0 ? sprintf("%.2f", o / g) : "-")
  }'
done
echo "(instructions per transaction; $((TX * CLIENTS)) transactions per mode, $CLIENTS clients; shardline routes over ${DEMO_SHARDS:-4} shards, the floor relay and PgBouncer reach shard 0)"

if [ -n "${TOP:-}" ]; then
  echo
  echo "shardline, ${TOP_MODE:-simple} mode: instructions per transaction by function (inclusive)"
  callgrind_annotate --inclusive=yes --threshold=100 "$TOP_DUMP" 2>/dev/null |
    awk '/%\)/ {print}' | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#\[[^]]*\]##' |
    awk -v n="$((TX * CLIENTS))" '{v = $1; gsub(",", "", v); sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, ""); printf "%8d  %s\n", v / n, $0}' |
    grep -v -E 'clone|start_thread|thread_start|call_once|backtrace|enter_runtime|Scoped|blocking::pool' |
    head -n "$TOP" || true
  cp "$TOP_DUMP" /tmp/shardline-callgrind.out
  echo "(the whole profile: /tmp/shardline-callgrind.out, for callgrind_annotate)"
fi
