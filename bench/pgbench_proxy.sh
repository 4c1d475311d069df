#!/usr/bin/env bash
# pgbench -S (select-only) straight against one shard and through shardline, in the same run,
# for the simple, extended and prepared protocols. Prints TPS, the proxy/direct ratio and the
# proxy's CPU time per transaction split into user + system (utime, stime from
# /proc/<pid>/stat). When pgbouncer is installed, the same load through pgbouncer (transaction
# pooling, to shard 0) is shown too, with the proxy/pgbouncer ratio and pgbouncer's CPU.
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

# shellcheck source=bench/demo.sh
. bench/demo.sh
PGB_PID=
cleanup() {
  [ -n "$PGB_PID" ] && kill "$(cat "$DIR/pgbouncer.pid" 2>/dev/null)" 2>/dev/null
  stop_demo
}
trap cleanup EXIT
SHARD0=$((PORT + 1))

# Select-only load on `users`, hash-sharded by id in the demo config. Every shard gets the
# full 100k rows, so the direct run (on shard 0) and the proxied run (spread over 4 shards) do
# identical work per query; only the routing and the extra hop differ.
for i in 0 1 2 3; do
  psql -X -q -h 127.0.0.1 -p $((PORT + 1 + i)) -U app app -c \
    "DROP TABLE IF EXISTS users; CREATE TABLE users (id bigint PRIMARY KEY, name text);
     INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100000) g; ANALYZE users;" >/dev/null
done
cat >"$DIR/select.sql" <<'SQL'
\set id random(1, 100000)
SELECT name FROM users WHERE id = :id;
SQL

# Optional reference: pgbouncer in front of shard 0.
PGB_PORT=$((PORT + 100))
if command -v pgbouncer >/dev/null 2>&1; then
  cat >"$DIR/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$SHARD0 dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
auth_type = plain
auth_file = $DIR/users.txt
pool_mode = transaction
default_pool_size = 20
unix_socket_dir =
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
INI
  echo '"app" "app"' >"$DIR/users.txt"
  chown -R postgres "$DIR" 2>/dev/null || true
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- pgbouncer -d "$DIR/pgbouncer.ini"; else pgbouncer -d "$DIR/pgbouncer.ini"; fi
  PGB_PID=started
  sleep 1
fi

# shellcheck source=bench/measure.sh
. bench/measure.sh
PGB_PROC=
[ -n "$PGB_PID" ] && PGB_PROC=$(cat "$DIR/pgbouncer.pid" 2>/dev/null || true)

printf "%-9s %10s %10s %6s %16s %10s %6s %16s\n" mode "direct TPS" "proxy TPS" "/dir" \
  "proxy us/tx u+s" "pgb TPS" "/pgb" "pgb us/tx u+s"
for mode in simple extended prepared; do
  run() { pgbench -n -h 127.0.0.1 -p "$1" -U app -c "$CLIENTS" -j 2 -T "$SECS" -M "$mode" -f "$DIR/select.sql" app 2>/dev/null; }
  direct=$(run "$SHARD0" | tps)
  before=$(cpu_ticks "$PROXY_PID")
  out=$(run "$PORT")
  after=$(cpu_ticks "$PROXY_PID")
  proxy=$(echo "$out" | tps)
  read -r pu ps <<<"$(per_tx "$before" "$after" "$(echo "$out" | processed)")"
  pgb="-" gu="-" gs="-"
  if [ -n "$PGB_PROC" ]; then
    # pgbouncer before 1.21 cannot run protocol-level prepared statements in transaction mode.
    before=$(cpu_ticks "$PGB_PROC")
    out=$(run "$PGB_PORT" || true)
    after=$(cpu_ticks "$PGB_PROC")
    pgb=$(echo "$out" | tps)
    if [ -n "$pgb" ]; then
      read -r gu gs <<<"$(per_tx "$before" "$after" "$(echo "$out" | processed)")"
    else
      pgb="fails"
    fi
  fi
  awk -v m="$mode" -v d="$direct" -v p="$proxy" -v pu="$pu" -v ps="$ps" -v g="$pgb" -v gu="$gu" -v gs="$gs" 'BEGIN {
    printf "%-9s %10.0f %10.0f %6.2f %16s %10s %6s %16s\n", m, d, p, (d > 0 ? p / d : 0), pu " + " ps,
      g, (g + 0 > 0 ? sprintf("%.2f", p / g) : "-"), gu " + " gs }'
done
