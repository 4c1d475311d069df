#!/usr/bin/env bash
# Reads on healthy shards while one shard hangs, through shardline on a 4-shard demo cluster:
#  1. 8 pgbench clients read `events` rows of shards 0-2 (range-sharded, one key per read)
#     while 4 psql loops read rows of shard 3, for SECONDS seconds: latencies of the healthy
#     reads (p50 / p99 from pgbench's per-transaction log) and what the shard-3 reads got;
#  2. the same with shard 3's PostgreSQL stopped by SIGSTOP (a hung host: connections are
#     accepted by the kernel and never answered, open ones stall mid-statement);
#  3. SIGCONT, and the time until the shard's circuit breaker has closed again.
# The demo config gets `pool.query_timeout_ms: 1000`, `pool.connect_timeout_ms: 1000` and
# `breaker: {open_ms: 5000}` (hot reload) so stalled connections are cancelled, the breaker
# opens within seconds under the 4 shard-3 readers, and the recovery fits in the run.
#
#   bash bench/faults.sh [seconds per phase, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_PHASE=${1:-10}
PORT=${BENCH_PORT:-16632}
DIR=$(mktemp -d /tmp/shardline-faults.XXXXXX)
chmod 755 "$DIR"
export PGPASSWORD=app
STOPPED=""

# shellcheck source=bench/demo.sh
. bench/demo.sh
cleanup() {
  [ -n "$STOPPED" ] && kill -CONT $STOPPED 2>/dev/null || true
  stop_demo
}
trap cleanup EXIT

ROWS=100000
for i in 0 1 2 3; do
  psql -X -q -h 127.0.0.1 -p $((PORT + 1 + i)) -U app app -c \
    "DROP TABLE IF EXISTS events; CREATE TABLE events (id bigint PRIMARY KEY, payload text);
     INSERT INTO events SELECT $i * 1000000 + g, 'event ' || g FROM generate_series(0, $ROWS - 1) g;
     ANALYZE events;" >/dev/null
done
sed -i "s/^pool:$/pool:\n  query_timeout_ms: 1000\n  connect_timeout_ms: 1000/" "$DIR/shards.yaml"
printf 'breaker: {failures: 5, open_ms: 5000, successes: 2}\n' >>"$DIR/shards.yaml"
sleep 2
grep -q "query_timeout_ms: 1000" "$DIR/shards.yaml"

cat >"$DIR/healthy.sql" <<EOF
\set shard random(0, 2)
\set id random(0, $((ROWS - 1)))
\set key :shard * 1000000 + :id
SELECT payload FROM events WHERE id = :key;
EOF

admin() { psql -X -At -h 127.0.0.1 -p "$PORT" -U admin shardline -c "$1"; }
breaker_of_shard3() { PGPASSWORD=admin admin "SHOW SHARDS" | awk -F'|' '$1 == "shard3" {print $NF}'; }

# Reads of shard 3 in a loop for the phase: one line per read, "<ms> ok|<sqlstate>".
stalled_reads() {
  local end=$(( $(date +%s) + SECONDS_PER_PHASE )) start out code
  while [ "$(date +%s)" -lt "$end" ]; do
    start=$(date +%s%N)
    if out=$(PGCONNECT_TIMEOUT=30 psql -X -At -v VERBOSITY=verbose -h 127.0.0.1 -p "$PORT" -U app app \
      -c "SELECT payload FROM events WHERE id = 3000000 + $RANDOM" 2>&1); then
      code=ok
    else
      code=$(printf '%s' "$out" | grep -o 'ERROR:  [0-9A-Z]\{5\}' | head -1 | cut -c9-)
      code=${code:-failed}
    fi
    echo "$(( ($(date +%s%N) - start) / 1000000 )) $code"
  done
}

phase() { # label -> one table row
  local label=$1 log="$DIR/$2"
  local readers=()
  for r in 1 2 3 4; do
    stalled_reads >"$log.stalled.$r" &
    readers+=($!)
  done
  pgbench -n -c 8 -j 2 -T "$SECONDS_PER_PHASE" -f "$DIR/healthy.sql" -l --log-prefix="$log" \
    -h 127.0.0.1 -p "$PORT" -U app app >"$log.out" 2>&1 || true
  wait "${readers[@]}"
  cat "$log".stalled.* >"$log.stalled"
  local tps p50 p99 failed_h total failed median codes
  tps=$(awk '/^tps/ {printf "%.0f", $3}' "$log.out")
  failed_h=$(awk '/number of failed transactions:/ {print $5}' "$log.out")
  cat "$log".[0-9]* | awk '{print $3}' | sort -n >"$log.lat"
  p50=$(awk '{a[NR]=$1} END {printf "%.2f", a[int(NR*0.50)]/1000}' "$log.lat")
  p99=$(awk '{a[NR]=$1} END {printf "%.2f", a[int(NR*0.99)]/1000}' "$log.lat")
  total=$(wc -l <"$log.stalled")
  failed=$(awk '$2 != "ok"' "$log.stalled" | wc -l)
  median=$(awk '{print $1}' "$log.stalled" | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}')
  codes=$(awk '$2 != "ok" {print $2}' "$log.stalled" | sort | uniq -c | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}')
  printf "| %s | %s | %s | %s | %s | %s of %s (%s) | %s |\n" \
    "$label" "$tps" "$p50" "$p99" "${failed_h:-0}" "$failed" "$total" "${codes:--}" "$median"
}

echo "| phase | healthy-shard reads/s | p50 ms | p99 ms | healthy failures | shard-3 reads failed (SQLSTATEs) | median ms per shard-3 read (a psql run) |"
echo "|---|---|---|---|---|---|---|"
phase "all shards up" up

# The postmaster is the process listening on shard 3's port; its children are the backends.
postmaster=$(ss -ltnpH "sport = :$((PORT + 4))" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
STOPPED="$postmaster $(pgrep -P "$postmaster" | tr '\n' ' ')"
kill -STOP $STOPPED
phase "shard3 hung (SIGSTOP)" hung

echo
echo "shard3's breaker at the end of the hang: $(breaker_of_shard3)"
kill -CONT $STOPPED
resumed=$(date +%s%N)
STOPPED=""
while [ "$(breaker_of_shard3)" != "closed" ]; do
  sleep 0.1
  if [ $(( ($(date +%s%N) - resumed) / 1000000000 )) -gt 60 ]; then
    echo "the breaker of shard3 did not close within 60 s"; exit 1
  fi
done
echo
echo "shard3's breaker closed $(( ($(date +%s%N) - resumed) / 1000000 )) ms after the shard resumed (open_ms 5000, probes every second)"
psql -X -At -h 127.0.0.1 -p "$PORT" -U app app -c "SELECT payload FROM events WHERE id = 3000001" >/dev/null
echo "shard3 serves again"
