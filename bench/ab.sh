#!/usr/bin/env bash
# Two proxies side by side on one demo cluster, alternated: for telling whether a change
# moved the proxy's CPU per transaction when one pgbench run's noise (10-20% on a shared
# machine) hides it. Both builds serve the demo's shards.yaml at once (on ports of their
# own); pgbench -S runs through A, then B, ROUNDS times per mode, and the table shows each
# one's median TPS, user, system and total CPU per transaction (utime, stime from
# /proc/<pid>/stat), context switches per transaction and the involuntary ones among them
# (preempted while it had work; /proc/<pid>/task/*/status) over its runs, then B's median
# relative to A's.
#
#   bash bench/ab.sh BUILD_A BUILD_B [rounds, default 5] [seconds per run, default 4] [clients, default 16]
#
# BUILD_A may be the word pgbouncer: PgBouncer in transaction pooling in front of shard 0, so
# the table answers the benchmark targets (shardline's CPU and TPS against PgBouncer's); run
# it with DEMO_SHARDS=1 to put shardline on the same footing (one shard, shard 0), and with
# PGBOUNCERS=n for n PgBouncers sharing the port (so_reuseport), as PgBouncer uses n cores,
# in one scheduling group as one shardline's threads are: the footing of THREADS=n.
# MODES (default "simple extended prepared"; never prepared against PgBouncer, which
# bench/pgbouncer.sh runs without prepared statement support in transaction pooling) picks
# the modes; DEMO_SHARDS the shards; THREADS the shardline builds' threads.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,20p' "$0"; exit 1; }
A=$1 B=$2
ROUNDS=${3:-5}
SECS=${4:-4}
CLIENTS=${5:-16}
PORT=${BENCH_PORT:-16532}
DIR=$(mktemp -d /tmp/shardline-ab.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app
# The demo cluster is started by a shardline build: A's, or B's when A is PgBouncer.
SHARDLINE_BIN=$A
[ "$A" = pgbouncer ] && SHARDLINE_BIN=$B
# shellcheck source=bench/demo.sh
. bench/demo.sh
PIDS=()
cleanup() {
  # An entry may list several pids (PgBouncers).
  # shellcheck disable=SC2086
  for pid in "${PIDS[@]}"; do kill $pid 2>/dev/null || true; done
  stop_demo
}
trap cleanup EXIT
# shellcheck source=bench/select_load.sh
. bench/select_load.sh
# shellcheck source=bench/measure.sh
. bench/measure.sh

# Starts BUILD on the demo's config at PORT; prints its pid.
start() { # BUILD PORT NAME
  sed -e "s/^listen: .*/listen: 127.0.0.1:$2/" -e '/^metrics_listen/d' "$DIR/shards.yaml" >"$DIR/$3.yaml"
  start_shardline "$1" "$DIR/$3.yaml" "$2" "$DIR/$3.log"
}
A_PORT=$((PORT + 200)) B_PORT=$((PORT + 201))
MODES=${MODES:-simple extended prepared}
if [ "$A" = pgbouncer ]; then
  command -v pgbouncer >/dev/null || { echo "pgbouncer is not installed (apt install pgbouncer)"; exit 1; }
  SHARD0=$((PORT + 1)) PGB_PORT=$A_PORT
  # shellcheck source=bench/pgbouncer.sh
  . bench/pgbouncer.sh
  [ -n "$PGB_PROC" ] || { echo "pgbouncer did not start; see $DIR/pgbouncer.log"; exit 1; }
  A_PID=$PGB_PROC
  [ "${PGBOUNCERS:-1}" -gt 1 ] && A="$PGBOUNCERS pgbouncers (so_reuseport, one session)"
  MODES=${MODES/prepared/}
  [ -n "${MODES// /}" ] || { echo "against pgbouncer, MODES needs simple or extended"; exit 1; }
else
  A_PID=$(start "$A" "$A_PORT" a)
fi
PIDS+=("$A_PID")
B_PID=$(start "$B" "$B_PORT" b)
PIDS+=("$B_PID")

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }

printf "%-9s %-3s %8s %11s %11s %11s %7s %7s\n" mode "" tps "user us/tx" "sys us/tx" "total" cs/tx \
  "invol"
for mode in $MODES; do
  : >"$DIR/a.runs"
  : >"$DIR/b.runs"
  for _ in $(seq 1 "$ROUNDS"); do
    measure "$A_PORT" "$A_PID" "$mode" >>"$DIR/a.runs"
    measure "$B_PORT" "$B_PID" "$mode" >>"$DIR/b.runs"
  done
  for build in a b; do
    tps_m=$(awk '{print $1}' "$DIR/$build.runs" | median)
    user_m=$(awk '{print $2}' "$DIR/$build.runs" | median)
    sys_m=$(awk '{print $3}' "$DIR/$build.runs" | median)
    total_m=$(awk '{print $2 + $3}' "$DIR/$build.runs" | median)
    cs_m=$(awk '{print $4}' "$DIR/$build.runs" | median)
    invol_m=$(awk '{print $7}' "$DIR/$build.runs" | median)
    printf "%-9s %-3s %8.0f %11.2f %11.2f %11.2f %7.2f %7.2f\n" "$mode" "$build" "$tps_m" "$user_m" \
      "$sys_m" "$total_m" "$cs_m" "$invol_m"
    eval "${build}_tps=$tps_m ${build}_user=$user_m ${build}_sys=$sys_m ${build}_total=$total_m" \
      "${build}_cs=$cs_m ${build}_invol=$invol_m"
  done
  # shellcheck disable=SC2154 # set by the eval above
  awk -v m="$mode" -v at="$a_tps" -v bt="$b_tps" -v au="$a_user" -v bu="$b_user" -v as="$a_sys" \
    -v bs="$b_sys" -v ac="$a_total" -v bc="$b_total" -v ax="$a_cs" -v bx="$b_cs" -v ai="$a_invol" \
    -v bi="$b_invol" 'BEGIN {
    printf "%-9s %-3s %8.2f %11.2f %11.2f %11.2f %7.2f %7.2f\n", m, "b/a", bt / at, bu / au, bs / as, bc / ac,
      bx / ax, (ai > 0 ? bi / ai : 0) }'
done
echo "(medians of $ROUNDS runs each, alternated, $SECS s, $CLIENTS clients, ${DEMO_SHARDS:-4} shards; A = $A, B = $B)"
