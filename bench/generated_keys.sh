#!/usr/bin/env bash
# INSERTs through shardline with the shard key sent by the application and with the key left
# to its bigserial default (the proxy generates it), in the same run, for the simple, extended
# and prepared protocols: TPS (= keys generated per second), the keyless/keyed ratio, and the
# proxy's CPU time per transaction split into user + system.
#
#   bash bench/generated_keys.sh [seconds per run, default 10] [clients, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CLIENTS=${2:-8}
PORT=${BENCH_PORT:-17432}
DIR=$(mktemp -d /tmp/shardline-bench.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app

# shellcheck source=bench/demo.sh
. bench/demo.sh
trap stop_demo EXIT
# shellcheck source=bench/measure.sh
. bench/measure.sh

psql -X -q -h 127.0.0.1 -p "$PORT" -U app app -c \
  "DROP TABLE IF EXISTS users; CREATE TABLE users (id bigserial PRIMARY KEY, name text)" >/dev/null
# Explicit keys far above the generated ones, so the two never meet.
cat >"$DIR/keyed.sql" <<'SQL'
\set id random(1000000000000, 9000000000000)
INSERT INTO users (id, name) VALUES (:id, 'keyed') ON CONFLICT DO NOTHING;
SQL
cat >"$DIR/keyless.sql" <<'SQL'
INSERT INTO users (name) VALUES ('generated');
SQL

printf "%-9s %10s %16s %12s %16s %8s\n" mode "keyed TPS" "keyed us/tx u+s" "keyless TPS" \
  "keyless us/tx u+s" "ratio"
for mode in simple extended prepared; do
  measure() { # SCRIPT -> "TPS USER SYS"
    local before after out
    before=$(cpu_ticks "$PROXY_PID")
    out=$(pgbench -n -h 127.0.0.1 -p "$PORT" -U app -c "$CLIENTS" -j 2 -T "$SECS" -M "$mode" \
      -f "$1" app 2>/dev/null)
    after=$(cpu_ticks "$PROXY_PID")
    echo "$(echo "$out" | tps) $(per_tx "$before" "$after" "$(echo "$out" | processed)")"
  }
  read -r kt ku ks <<<"$(measure "$DIR/keyed.sql")"
  read -r gt gu gs <<<"$(measure "$DIR/keyless.sql")"
  awk -v m="$mode" -v kt="$kt" -v k="$ku + $ks" -v gt="$gt" -v g="$gu + $gs" 'BEGIN {
    printf "%-9s %10.0f %16s %12.0f %16s %8.2f\n", m, kt, k, gt, g, (kt > 0 ? gt / kt : 0) }'
done
rows=$(psql -X -At -h 127.0.0.1 -p "$PORT" -U app app -c "SELECT count(*) FROM users")
echo "rows: $rows"
