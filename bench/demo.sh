# Sourced by the bench scripts: builds shardline, starts `shardline demo` with 4 shards (or
# DEMO_SHARDS) on $PORT in $DIR, waits until it is ready, and sets BIN, DEMO (its pid) and
# PROXY_PID.
# The caller's EXIT trap must call stop_demo.
# The demo serves TLS, which libpq uses by default (sslmode=prefer); the benchmarks compare
# clear-text connections with direct and pgbouncer ones unless PGSSLMODE says otherwise
# (bench/tls.sh measures TLS itself).
export PGSSLMODE=${PGSSLMODE:-disable}
# SHARDLINE_BIN runs another build (say, the commit before a change) instead of this tree's.
if [ -n "${SHARDLINE_BIN:-}" ]; then
  BIN=$SHARDLINE_BIN
else
  cargo build --release --quiet --bin shardline
  BIN=${CARGO_TARGET_DIR:-target}/release/shardline
fi
# THREADS sets the proxy's serving threads (default: one per core).
# Each proxy runs in a session of its own (setsid), as pgbouncer does with -d and a service
# manager does with any daemon: the kernel schedules each session as one group (autogroup), so
# a proxy left in the bench's session shares its CPU share with pgbench and is preempted by
# pgbench's wakeups far more often than PgBouncer in its own group (measured: 0.27-0.33
# preemptions per transaction against PgBouncer's 0.06-0.11). Out of the bench's session, a
# proxy no longer gets the terminal's Ctrl-C: stop_demo stops every proxy started here, and it
# is the EXIT trap until the caller sets its own (which must call it). The scripts run without
# job control, so setsid execs in place and $! is the proxy's pid.
setsid "$BIN" ${THREADS:+--threads "$THREADS"} demo --shards "${DEMO_SHARDS:-4}" --port "$PORT" --dir "$DIR" >"$DIR/demo.log" 2>&1 &
DEMO=$!
trap stop_demo EXIT

# Starts BIN serving CONFIG (a shards.yaml listening on PORT) beside the demo, logging to LOG,
# waits until it answers, and prints its pid (noted at once for stop_demo, as the caller
# learns it only once this returns). THREADS applies as to the demo.
start_shardline() { # BIN CONFIG PORT LOG
  setsid "$1" ${THREADS:+--threads "$THREADS"} --config "$2" --no-watch >"$4" 2>&1 &
  local pid=$!
  echo "$pid" >>"$DIR/proxies.pids"
  for _ in $(seq 1 60); do
    psql -X -q -h 127.0.0.1 -p "$3" -U app app -c "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.5
  done
  echo "$pid"
}

stop_demo() {
  if [ -f "$DIR/proxies.pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$DIR/proxies.pids"
  fi
  kill -INT "$DEMO" 2>/dev/null || true
  wait "$DEMO" 2>/dev/null || true
  rm -rf "$DIR"
}

for _ in $(seq 1 120); do
  grep -q "shardline is ready" "$DIR/demo.log" 2>/dev/null && break
  sleep 0.5
done
grep -q "shardline is ready" "$DIR/demo.log" || { cat "$DIR/demo.log"; stop_demo; exit 1; }
PROXY_PID=$DEMO
