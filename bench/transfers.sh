#!/usr/bin/env bash
# Money transfers (two UPDATEs in one transaction) through shardline between two accounts on
# one shard and on two shards (the latter a transaction that spans shards, committed with
# two-phase commit), next to the same transfers on one plain PostgreSQL, in the same run.
# Prints TPS, p99 latency and the proxy's CPU time per transaction for each.
#
#   bash bench/transfers.sh [seconds per run, default 10] [clients, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CLIENTS=${2:-8}
PORT=${BENCH_PORT:-16532}
DIR=$(mktemp -d /tmp/shardline-transfers.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app

# shellcheck source=bench/demo.sh
. bench/demo.sh
trap stop_demo EXIT
PLAIN=$((PORT + 4)) # shard 3's server, used as one plain PostgreSQL holding every account

# `events` is range-sharded in the demo: ids below 1,000,000 on shard0, the next million on
# shard1. 10,000 accounts in each range; the plain server holds all 20,000.
psql_on() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U app app -c "$2" >/dev/null; }
psql_on "$PORT" "DROP TABLE IF EXISTS events; CREATE TABLE events (id bigint PRIMARY KEY, balance bigint NOT NULL)"
psql_on $((PORT + 1)) "INSERT INTO events SELECT g, 1000 FROM generate_series(1, 10000) g"
psql_on $((PORT + 2)) "INSERT INTO events SELECT g, 1000 FROM generate_series(1000001, 1010000) g"
psql_on "$PLAIN" "INSERT INTO events SELECT g, 1000 FROM generate_series(1, 10000) g
                  UNION ALL SELECT g, 1000 FROM generate_series(1000001, 1010000) g"

# Rows are locked in id order, so transfers cannot deadlock. The keys are computed by pgbench:
# a key written as an expression (least(…)) would not be read by the router as one key.
transfer() {
  cat <<SQL
\\set a random(1, 10000)
\\set b random($1, $2)
\\set lo least(:a, :b)
\\set hi greatest(:a, :b)
\\set amount random(1, 100)
BEGIN;
UPDATE events SET balance = balance - :amount WHERE id = :lo;
UPDATE events SET balance = balance + :amount WHERE id = :hi;
END;
SQL
}
transfer 1 10000 >"$DIR/one_shard.sql"
transfer 1000001 1010000 >"$DIR/two_shards.sql"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# run PORT MODE SCRIPT -> "tps p99_ms transactions"
run() {
  rm -f "$DIR"/log.*
  local out
  out=$(cd "$DIR" && pgbench -n -h 127.0.0.1 -p "$1" -U app -c "$CLIENTS" -j 2 -T "$SECS" -M "$2" \
    -f "$3" -l --log-prefix=log app 2>/dev/null)
  local tps txs p99
  tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
  txs=$(echo "$out" | awk -F': ' '/actually processed/ {split($2, a, "/"); print a[1]; exit}')
  p99=$(cat "$DIR"/log.* | awk '{print $3}' | sort -n | awk '{v[NR] = $1} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f", v[i] / 1000}')
  echo "$tps $p99 $txs"
}

printf "%-9s %-11s %10s %9s %18s\n" mode transfer TPS "p99 ms" "proxy CPU us/tx"
for mode in simple extended; do
  for kind in one_shard two_shards; do
    read -r tps p99 _ < <(run "$PLAIN" "$mode" "$DIR/$kind.sql")
    printf "%-9s %-11s %10.0f %9s %18s\n" "$mode" "plain PG" "$tps" "$p99" "-"
    before=$(cpu_ticks "$PROXY_PID")
    read -r tps p99 txs < <(run "$PORT" "$mode" "$DIR/$kind.sql")
    after=$(cpu_ticks "$PROXY_PID")
    us=$(awk -v c=$((after - before)) -v hz="$HZ" -v t="$txs" 'BEGIN {printf "%.1f", (t > 0 ? c * 1000000 / hz / t : 0)}')
    printf "%-9s %-11s %10.0f %9s %18s\n" "$mode" "$kind" "$tps" "$p99" "$us"
  done
done

# Every transfer kept the total on the two shards, and no prepared transaction was left.
total=0
left=0
for i in 0 1; do
  read -r sum n < <(psql -X -At -F ' ' -h 127.0.0.1 -p $((PORT + 1 + i)) -U app app \
    -c "SELECT sum(balance), (SELECT count(*) FROM pg_prepared_xacts) FROM events")
  total=$((total + sum))
  left=$((left + n))
done
echo "total balance on the shards: $total (expected 20000000); prepared transactions left: $left"
