#!/usr/bin/env bash
# Scatter-gather through shardline on a 4-shard demo cluster:
#  1. `SELECT … ORDER BY … LIMIT 100` and `SELECT count(*)` across 4 shards vs the same query
#     on each shard alone (ratio to the slowest shard);
#  2. a large ordered cross-shard result streamed through the proxy, with the proxy's peak RSS
#     (VmHWM) before and after, to show the merge holds a bounded amount per shard.
#
#   bash bench/scatter.sh [rows per shard, default 500000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-500000}
PORT=${BENCH_PORT:-16532}
DIR=$(mktemp -d /tmp/shardline-scatter.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app

# shellcheck source=bench/demo.sh
. bench/demo.sh
trap stop_demo EXIT

# `users` is hash-sharded in the demo config; each shard is loaded directly with its own
# interleaved ids (placement does not matter for reads without a key).
for i in 0 1 2 3; do
  psql -X -q -h 127.0.0.1 -p $((PORT + 1 + i)) -U app app -c \
    "DROP TABLE IF EXISTS users; CREATE TABLE users (id bigint PRIMARY KEY, name text, score int);
     INSERT INTO users SELECT g * 4 + $i, 'user ' || g, (g::bigint * 7919) % 1000 FROM generate_series(0, $ROWS - 1) g;
     ANALYZE users;" >/dev/null
done

time_query() { # port, query, runs -> ms per run
  local start end
  start=$(date +%s%N)
  for _ in $(seq 1 "$3"); do psql -X -q -At -h 127.0.0.1 -p "$1" -U app app -c "$2" >/dev/null; done
  end=$(date +%s%N)
  echo $(( (end - start) / 1000000 / $3 ))
}

compare_query() { # label, query: each shard alone, then through the proxy, and the ratio
  local slowest=0 ms
  printf "%-44s %10s\n" "query: $1" "ms/run"
  for i in 0 1 2 3; do
    ms=$(time_query $((PORT + 1 + i)) "$2" 10)
    printf "%-44s %10s\n" "shard$i alone" "$ms"
    [ "$ms" -gt "$slowest" ] && slowest=$ms
  done
  ms=$(time_query "$PORT" "$2" 10)
  printf "%-44s %10s\n" "through shardline (4 shards)" "$ms"
  awk -v p="$ms" -v s="$slowest" 'BEGIN { if (s > 0) printf "ratio to the slowest shard: %.2f\n\n", p / s }'
}

compare_query "ORDER BY score DESC, id LIMIT 100" \
  "SELECT id, name FROM users ORDER BY score DESC, id LIMIT 100"
compare_query "count(*)" "SELECT count(*) FROM users"

before=$(awk '/VmHWM/ {print $2}' "/proc/$PROXY_PID/status")
start=$(date +%s%N)
psql -X -q -At -h 127.0.0.1 -p "$PORT" -U app app -c "SELECT id, name, score FROM users ORDER BY id" | wc -l >"$DIR/count"
end=$(date +%s%N)
after=$(awk '/VmHWM/ {print $2}' "/proc/$PROXY_PID/status")
echo "streamed $(cat "$DIR/count") ordered rows across 4 shards in $(( (end - start) / 1000000 )) ms"
echo "proxy peak RSS (VmHWM): ${before} kB before, ${after} kB after"
