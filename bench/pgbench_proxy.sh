#!/usr/bin/env bash
# pgbench -S (select-only) straight against one shard and through shardline, in the same run,
# for the simple, extended and prepared protocols. Prints TPS, the proxy/direct ratio and the
# proxy's CPU time per transaction split into user + system (utime, stime from
# /proc/<pid>/stat). When pgbouncer is installed, the same load through pgbouncer (transaction
# pooling, to shard 0) is shown too, with the proxy/pgbouncer ratio and pgbouncer's CPU.
#
# Also the context switches and system calls per transaction of each proxy (all its threads;
# system calls only with SYSCALLS=1, counted by perf, which slows the run it watches), and the
# RSS each proxy grows by per idle logged-in client (IDLE clients, default 10,000; IDLE=0
# skips it).
#
#   bash bench/pgbench_proxy.sh [seconds per run, default 10] [clients, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CLIENTS=${2:-8}
PORT=${BENCH_PORT:-16432}
DIR=$(mktemp -d /tmp/shardline-bench.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app

# Idle clients need a file descriptor each in the proxies (inherited from this shell).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# shellcheck source=bench/demo.sh
. bench/demo.sh
cleanup() {
  stop_pgbouncer
  stop_demo
}
trap cleanup EXIT
SHARD0=$((PORT + 1))

# shellcheck source=bench/select_load.sh
. bench/select_load.sh

# Optional reference: pgbouncer in front of shard 0.
PGB_PORT=$((PORT + 100))
# shellcheck source=bench/pgbouncer.sh
. bench/pgbouncer.sh

# shellcheck source=bench/measure.sh
. bench/measure.sh

printf "%-9s %9s %9s %5s %15s %6s %6s %9s %5s %15s %6s %6s\n" mode "direct" "proxy" "/dir" \
  "proxy us/tx u+s" "cs/tx" "sc/tx" "pgbouncer" "/pgb" "pgb us/tx u+s" "cs/tx" "sc/tx"
for mode in simple extended prepared; do
  direct=$(pgbench -n -h 127.0.0.1 -p "$SHARD0" -U app -c "$CLIENTS" -j 2 -T "$SECS" -M "$mode" \
    -f "$DIR/select.sql" app 2>/dev/null | tps)
  read -r proxy pu ps pcs psc <<<"$(measure "$PORT" "$PROXY_PID" "$mode")"
  pgb="-" gu="-" gs="-" gcs="-" gsc="-"
  # pgbouncer before 1.21 cannot run protocol-level prepared statements in transaction mode.
  [ -n "$PGB_PROC" ] && read -r pgb gu gs gcs gsc <<<"$(measure "$PGB_PORT" "$PGB_PROC" "$mode")"
  awk -v m="$mode" -v d="$direct" -v p="$proxy" -v pu="$pu" -v ps="$ps" -v pcs="$pcs" \
    -v psc="$psc" -v g="$pgb" -v gu="$gu" -v gs="$gs" -v gcs="$gcs" -v gsc="$gsc" 'BEGIN {
    printf "%-9s %9.0f %9s %5.2f %15s %6s %6s %9s %5s %15s %6s %6s\n", m, d, p,
      (d > 0 ? p / d : 0), pu " + " ps, pcs, psc, g, (g + 0 > 0 ? sprintf("%.2f", p / g) : "-"),
      gu " + " gs, gcs, gsc }'
done

# Memory of idle clients: RSS growth of each proxy while IDLE clients stay logged in.
if [ "${IDLE:-10000}" -gt 0 ]; then
  proxy_kb=$(idle_kb_per_client "$PROXY_PID" "$PORT" "${IDLE:-10000}")
  pgb_kb="-"
  [ -n "$PGB_PROC" ] && pgb_kb=$(idle_kb_per_client "$PGB_PROC" "$PGB_PORT" "${IDLE:-10000}")
  echo "idle clients: ${IDLE:-10000}; RSS growth per client: shardline $proxy_kb kB, pgbouncer $pgb_kb kB"
fi
