#!/usr/bin/env bash
# Pull-up reads: queries the proxy's merge cannot answer (a join of tables that are not
# co-located, a window function, count(DISTINCT)) over ROWS rows per table spread over 4 shards,
# through shardline, next to the same query on one PostgreSQL database holding all the rows
# (on shard 0's server). Also the raw speed of moving rows between two servers with
# `COPY … TO STDOUT | COPY … FROM STDIN` (binary), the floor a pull-up cannot beat.
# Prints seconds per query, the proxy/one-server ratio and the rows pulled per second.
#
#   bash bench/pull_up.sh [rows per table, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
PORT=${BENCH_PORT:-16532}
DIR=$(mktemp -d /tmp/shardline-bench.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app
# shellcheck source=bench/demo.sh
. bench/demo.sh
trap stop_demo EXIT
SHARD0=$((PORT + 1))
SHARD1=$((PORT + 2))

# The join pulls both tables: raise the budget (the demo reloads its shards.yaml on change).
echo "max_pull_rows: $((3 * ROWS))" >>"$DIR/shards.yaml"

proxy() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U app app "$@"; }
oracle() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$SHARD0" -U app oracle "$@"; }
# The demo's servers take their superuser on a Unix socket in the data directory.
psql -X -q -h "$DIR/data/sockets" -p "$SHARD0" -U postgres postgres \
  -c "CREATE DATABASE oracle OWNER app" >/dev/null

DDL="CREATE TABLE users (id bigint PRIMARY KEY, name text, score int);
     CREATE TABLE orders (id bigint, user_id bigint, total numeric(10,2));"
proxy -c "DROP TABLE IF EXISTS users, orders" -c "$DDL" >/dev/null 2>&1
oracle -c "$DDL" >/dev/null
ROWS_SQL="SELECT g, 'user ' || (g % 5000), (g * 7) % 1000 FROM generate_series(1, $ROWS) g"
ORDERS_SQL="SELECT g, (g * 13) % $ROWS + 1, (g % 10000) / 100.0 FROM generate_series(1, $ROWS) g"
echo "loading $ROWS users and $ROWS orders through the proxy (COPY routes each row)..." >&2
psql -X -q -h 127.0.0.1 -p "$SHARD0" -U app oracle -c "COPY ($ROWS_SQL) TO STDOUT" |
  proxy -c "COPY users (id, name, score) FROM STDIN"
psql -X -q -h 127.0.0.1 -p "$SHARD0" -U app oracle -c "COPY ($ORDERS_SQL) TO STDOUT" |
  proxy -c "COPY orders (id, user_id, total) FROM STDIN"
oracle -c "INSERT INTO users $ROWS_SQL" -c "INSERT INTO orders $ORDERS_SQL" \
  -c "ANALYZE users" -c "ANALYZE orders" >/dev/null
for port in $(seq "$SHARD0" $((PORT + 4))); do
  psql -X -q -h 127.0.0.1 -p "$port" -U app app -c "ANALYZE users" -c "ANALYZE orders" >/dev/null
done

# Seconds one run of $2 takes through client $1 (the answer discarded).
timed() {
  local start end
  start=$(date +%s.%N)
  "$1" -o /dev/null -c "$2"
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}

printf "%-20s %8s %10s %7s %9s %16s\n" query "pulled" "1 server s" "proxy s" "/1 server" "pulled/s (query)"
while IFS='|' read -r name pulled sql; do
  one=$(timed oracle "$sql")
  through=$(timed proxy "$sql")
  awk -v n="$name" -v p="$pulled" -v o="$one" -v t="$through" 'BEGIN {
    printf "%-20s %8d %10.2f %7.2f %9.1f %16.0f\n", n, p, o, t, (o > 0 ? t / o : 0), (t > 0 ? p / t : 0) }'
done <<EOF
count(DISTINCT)|$ROWS|SELECT count(DISTINCT name), count(DISTINCT score) FROM users
window|$ROWS|SELECT id, rank() OVER (PARTITION BY score ORDER BY id) FROM users ORDER BY id LIMIT 10
non-co-located join|$((2 * ROWS))|SELECT count(*), sum(o.total) FROM users u JOIN orders o ON o.id = u.id
pushed-down filter|$((ROWS / 10))|SELECT count(DISTINCT name) FROM users WHERE id <= $((ROWS / 10))
EOF

# The floor: one shard's rows of a table copied to another server as fast as COPY goes.
share=$(psql -X -At -h 127.0.0.1 -p "$SHARD1" -U app app -c "SELECT count(*) FROM users")
start=$(date +%s.%N)
psql -X -q -h 127.0.0.1 -p "$SHARD1" -U app app -c "COPY users TO STDOUT (FORMAT binary)" |
  psql -X -q -h 127.0.0.1 -p "$SHARD0" -U app oracle \
    -c "CREATE TEMP TABLE x (LIKE users)" -c "COPY x FROM STDIN (FORMAT binary)"
end=$(date +%s.%N)
awk -v r="$share" -v s="$start" -v e="$end" 'BEGIN {
  printf "raw COPY pipe (one shard to another server): %d rows in %.2f s, %.0f rows/s\n", r, e - s, r / (e - s) }'
