#!/usr/bin/env bash
# What adding a fifth shard costs under each hash strategy, on a 5-shard demo cluster:
#  - `plain`:   `items_plain` hash over shard0-3 -> hash over shard0-4 (MODULUS 4 -> 5);
#  - `buckets`: `items_buckets` 1024 buckets, 256 per shard over shard0-3 -> each old shard
#               hands its last 51 buckets to shard4 (204 of 1024 move).
# ROWS rows are placed on shard0-3 exactly as PostgreSQL's hash partitioning puts them (the
# bucket is computed in SQL on each shard), then for each table `shardline-reshard plan`
# counts the moving rows and `start` copies them (timed), and `abort` takes the copies away.
#
#   bash bench/buckets.sh [rows, default 400000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-400000}
PORT=${BENCH_PORT:-16732}
DIR=$(mktemp -d /tmp/shardline-buckets.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app
cargo build --release --quiet --bin shardline-reshard
RESHARD=${CARGO_TARGET_DIR:-target}/release/shardline-reshard
SHARDS=5
DEMO_SHARDS=$SHARDS

# shellcheck source=bench/demo.sh
. bench/demo.sh
trap stop_demo EXIT

# PostgreSQL's hash-partition remainder of int8 `g` for MODULUS m (the resharder's bucket SQL).
remainder() { echo "((((hashint8extended($1, 8816678312871386365)::numeric + 5305509591434766563) % 18446744073709551616 + 18446744073709551616) % 18446744073709551616) % $2)"; }

for i in 0 1 2 3; do
  psql -X -q -h 127.0.0.1 -p $((PORT + 1 + i)) -U app app -c \
    "CREATE TABLE items_plain (id bigint PRIMARY KEY, payload text);
     CREATE TABLE items_buckets (id bigint PRIMARY KEY, payload text);
     INSERT INTO items_plain SELECT g, 'item ' || g FROM generate_series(1, $ROWS) g WHERE $(remainder g 4) = $i;
     INSERT INTO items_buckets SELECT g, 'item ' || g FROM generate_series(1, $ROWS) g WHERE $(remainder g 1024) >= $((256 * i)) AND $(remainder g 1024) < $((256 * (i + 1)));
     ANALYZE items_plain; ANALYZE items_buckets;" >/dev/null
done

shards_yaml() {
  echo "users: [{name: app, password: app}]"
  echo "shards:"
  for i in $(seq 0 $((SHARDS - 1))); do
    echo "  - {name: shard$i, host: 127.0.0.1, port: $((PORT + 1 + i)), database: app}"
  done
  echo "tables:"
}
plain() { echo "  - {name: items_plain, sharding: hash, column: id, type: int8, shards: [$1]}"; }
buckets_four() {
  echo "  - {name: items_buckets, sharding: hash, column: id, type: int8, buckets: 1024, bucket_map: [{from: 0, to: 256, shard: shard0}, {from: 256, to: 512, shard: shard1}, {from: 512, to: 768, shard: shard2}, {from: 768, to: 1024, shard: shard3}]}"
}
buckets_five() {
  echo "  - {name: items_buckets, sharding: hash, column: id, type: int8, buckets: 1024, bucket_map: [{from: 0, to: 205, shard: shard0}, {from: 205, to: 256, shard: shard4}, {from: 256, to: 461, shard: shard1}, {from: 461, to: 512, shard: shard4}, {from: 512, to: 717, shard: shard2}, {from: 717, to: 768, shard: shard4}, {from: 768, to: 973, shard: shard3}, {from: 973, to: 1024, shard: shard4}]}"
}
FOUR="shard0, shard1, shard2, shard3"
FIVE="$FOUR, shard4"
{ shards_yaml; plain "$FOUR"; buckets_four; } >"$DIR/from.yaml"
{ shards_yaml; plain "$FIVE"; buckets_four; } >"$DIR/to-plain.yaml"
{ shards_yaml; plain "$FOUR"; buckets_five; } >"$DIR/to-buckets.yaml"

echo "| strategy | rows moving (plan) | share | backfill s | rows/s |"
echo "|---|---|---|---|---|"
for strategy in plain buckets; do
  to="$DIR/to-$strategy.yaml"
  summary=$("$RESHARD" plan --from "$DIR/from.yaml" --to "$to" | grep 'rows move')
  moving=$(echo "$summary" | awk '{print $1}')
  share=$(echo "$summary" | grep -o '([0-9.]*%)' | tr -d '()')
  start=$(date +%s%N)
  "$RESHARD" start --from "$DIR/from.yaml" --to "$to" --batch 5000 >"$DIR/start-$strategy.log" 2>&1
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  "$RESHARD" abort --from "$DIR/from.yaml" --to "$to" >"$DIR/abort-$strategy.log" 2>&1
  printf "| %s | %s | %s | %s | %s |\n" "$strategy" "$moving" "$share" \
    "$(awk -v m="$ms" 'BEGIN {printf "%.1f", m / 1000}')" \
    "$(awk -v r="$moving" -v m="$ms" 'BEGIN {printf "%.0f", r * 1000 / (m > 0 ? m : 1)}')"
done
