#!/usr/bin/env bash
# The price of TLS: pgbench -S through shardline in clear text and over TLS (sslmode=require,
# the demo's certificate), and the same through pgbouncer (transaction pooling, to shard 0,
# serving the same certificate) when it is installed, in the same run. Prints TPS and each
# proxy's CPU per transaction (user + system) for the simple and extended protocols, then the
# RSS each proxy grows by per idle logged-in client, in clear text and over TLS (IDLE
# clients, default 2,000; IDLE=0 skips it).
#
#   bash bench/tls.sh [seconds per run, default 10] [clients, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CLIENTS=${2:-8}
PORT=${BENCH_PORT:-16432}
DIR=$(mktemp -d /tmp/shardline-bench.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app
# shellcheck source=bench/demo.sh
. bench/demo.sh
SHARD0=$((PORT + 1))
PGB_PORT=$((PORT + 100))
# pgbouncer serves the demo's certificate (copies it may read as the postgres user).
cp "$DIR/server.crt" "$DIR/pgb.crt"
cp "$DIR/server.key" "$DIR/pgb.key"
PGB_EXTRA="client_tls_sslmode = allow
client_tls_cert_file = $DIR/pgb.crt
client_tls_key_file = $DIR/pgb.key"
# shellcheck source=bench/pgbouncer.sh
. bench/pgbouncer.sh
cleanup() {
  stop_pgbouncer
  stop_demo
}
trap cleanup EXIT

# shellcheck source=bench/select_load.sh
. bench/select_load.sh
# shellcheck source=bench/measure.sh
. bench/measure.sh

printf "%-9s %-6s %10s %15s %10s %15s\n" mode link shardline "us/tx u+s" pgbouncer "us/tx u+s"
for mode in simple extended; do
  for link in plain tls; do
    if [ "$link" = tls ]; then export PGSSLMODE=require; else export PGSSLMODE=disable; fi
    read -r tps pu ps _ _ <<<"$(measure "$PORT" "$PROXY_PID" "$mode")"
    gtps="-" gu="-" gs="-"
    [ -n "$PGB_PROC" ] && read -r gtps gu gs _ _ <<<"$(measure "$PGB_PORT" "$PGB_PROC" "$mode")"
    printf "%-9s %-6s %10s %15s %10s %15s\n" "$mode" "$link" "$tps" "$pu + $ps" "$gtps" "$gu + $gs"
  done
done
unset PGSSLMODE

# Memory of idle clients, clear text and TLS (bench/idle_clients.py with IDLE_TLS).
if [ "${IDLE:-2000}" -gt 0 ]; then
  for link in plain tls; do
    if [ "$link" = tls ]; then export IDLE_TLS=1; else unset IDLE_TLS; fi
    proxy_kb=$(idle_kb_per_client "$PROXY_PID" "$PORT" "${IDLE:-2000}")
    pgb_kb="-"
    [ -n "$PGB_PROC" ] && pgb_kb=$(idle_kb_per_client "$PGB_PROC" "$PGB_PORT" "${IDLE:-2000}")
    echo "idle clients ($link): ${IDLE:-2000}; RSS growth per client: shardline $proxy_kb kB, pgbouncer $pgb_kb kB"
  done
  unset IDLE_TLS
fi
