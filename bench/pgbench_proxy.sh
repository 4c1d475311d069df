#!/usr/bin/env bash
# pgbench -S (select-only) in the same run, for the simple, extended and prepared protocols:
#   direct, 1 shard      pgbench straight against shard 0
#   direct, N shards     pgbench straight against the N shards at once, clients split evenly
#                        (the most any proxy spreading this load over them could serve)
#   pgbouncer, 1 shard   PgBouncer (transaction pooling) in front of shard 0, when installed
#   shardline, 1 shard   a second shardline whose only shard is shard 0: the same footing as
#                        PgBouncer, proxy against proxy
#   shardline, N shards  the demo's shardline, routing over its N shards (DEMO_SHARDS, 4)
# For each: TPS, its ratio to the direct run on as many shards and to PgBouncer's, the
# proxy's CPU time per transaction split into user + system (utime, stime from
# /proc/<pid>/stat), the shards' PostgreSQL CPU per transaction (all their processes), the
# proxy's context switches per transaction (all its threads) and, with SYSCALLS=1, its system
# calls per transaction (counted by perf, which slows the run it watches). Then the RSS each
# proxy grows by per idle logged-in client (IDLE clients, default 10,000; IDLE=0 skips it).
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
ONE_PID=
cleanup() {
  [ -n "$ONE_PID" ] && kill "$ONE_PID" 2>/dev/null || true
  stop_pgbouncer
  stop_demo
}
trap cleanup EXIT
SHARD0=$((PORT + 1))

# shellcheck source=bench/select_load.sh
. bench/select_load.sh

# shardline on the same footing as PgBouncer: one shard, shard 0.
ONE_PORT=$((PORT + 200))
cat >"$DIR/one_shard.yaml" <<YAML
listen: 127.0.0.1:$ONE_PORT
pool:
  mode: transaction
  size: 20
  min_idle: 1
users:
  - name: app
    password: app
    auth: scram-sha-256
shards:
  - name: shard0
    host: 127.0.0.1
    port: $SHARD0
    database: app
tables:
  - name: users
    sharding: hash
    column: id
    type: int8
YAML
ONE_PID=$(start_shardline "$BIN" "$DIR/one_shard.yaml" "$ONE_PORT" "$DIR/one_shard.log")

# Optional reference: pgbouncer in front of shard 0.
PGB_PORT=$((PORT + 100))
# shellcheck source=bench/pgbouncer.sh
. bench/pgbouncer.sh

# shellcheck source=bench/measure.sh
. bench/measure.sh

SHARDS=${DEMO_SHARDS:-4}
printf "%-9s %-20s %8s %5s %5s %15s %8s %6s %6s\n" mode target tps /dir /pgb "proxy us/tx u+s" \
  "pg us/tx" cs/tx sc/tx
row() { # MODE TARGET TPS DIRECT_TPS PGBOUNCER_TPS USER SYS CS SC POSTGRES
  awk -v m="$1" -v t="$2" -v p="$3" -v d="$4" -v g="$5" -v u="$6" -v s="$7" -v cs="$8" \
    -v sc="$9" -v pg="${10}" 'BEGIN {
    ratio_d = (d + 0 > 0 ? sprintf("%.2f", p / d) : "-")
    ratio_g = (g + 0 > 0 ? sprintf("%.2f", p / g) : "-")
    cpu = (u == "-" ? "-" : u " + " s)
    printf "%-9s %-20s %8.0f %5s %5s %15s %8s %6s %6s\n", m, t, p, ratio_d, ratio_g, cpu, pg, cs, sc }'
}
for mode in simple extended prepared; do
  read -r d1 _ _ _ _ dpg _ <<<"$(measure "$SHARD0" "$$" "$mode")"
  read -r dn dnpg <<<"$(measure_spread "$SHARD0" "$SHARDS" "$mode")"
  pgb=-
  # pgbouncer before 1.21 cannot run protocol-level prepared statements in transaction mode.
  if [ -n "$PGB_PROC" ] && [ "$mode" != prepared ]; then
    read -r pgb gu gs gcs gsc gpg _ <<<"$(measure "$PGB_PORT" "$PGB_PROC" "$mode")"
  fi
  read -r one ou os ocs osc opg _ <<<"$(measure "$ONE_PORT" "$ONE_PID" "$mode")"
  read -r proxy pu ps pcs psc ppg _ <<<"$(measure "$PORT" "$PROXY_PID" "$mode")"
  row "$mode" "direct, 1 shard" "$d1" "$d1" "$pgb" - - - - "$dpg"
  row "$mode" "direct, $SHARDS shards" "$dn" "$dn" "$pgb" - - - - "$dnpg"
  [ "$pgb" != - ] && row "$mode" "pgbouncer, 1 shard" "$pgb" "$d1" "$pgb" "$gu" "$gs" "$gcs" "$gsc" "$gpg"
  row "$mode" "shardline, 1 shard" "$one" "$d1" "$pgb" "$ou" "$os" "$ocs" "$osc" "$opg"
  row "$mode" "shardline, $SHARDS shards" "$proxy" "$dn" "$pgb" "$pu" "$ps" "$pcs" "$psc" "$ppg"
done

# Memory of idle clients: RSS growth of each proxy while IDLE clients stay logged in.
if [ "${IDLE:-10000}" -gt 0 ]; then
  proxy_kb=$(idle_kb_per_client "$PROXY_PID" "$PORT" "${IDLE:-10000}")
  pgb_kb="-"
  [ -n "$PGB_PROC" ] && pgb_kb=$(idle_kb_per_client "$PGB_PROC" "$PGB_PORT" "${IDLE:-10000}")
  echo "idle clients: ${IDLE:-10000}; RSS growth per client: shardline $proxy_kb kB, pgbouncer $pgb_kb kB"
fi
