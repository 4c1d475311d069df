#!/usr/bin/env bash
# Client compatibility suite (docs/compatibility.md): real drivers against shardline.
#
#   bash tests/clients/run.sh [REGEX]     run every client, or those whose name matches REGEX
#
# Installs the clients that are missing (install.sh, once), builds shardline, and runs the
# common scenario with each client, one after the other, each against a freshly started
# `shardline demo --shards 4` (transaction pooling, free loopback ports, one temporary data
# directory reused between restarts): a line of the table is about that client alone, never
# about what an earlier client left in the proxy's pools. Each client also drops and recreates
# the sharded `users` and `orders` tables. Prints one table line per client (client, version,
# pass/fail, what failed), then the full report of every client that failed; exits 1 if any
# failed.
#
# Environment: SHARDLINE_CLIENTS_CACHE (installs, default /var/tmp/shardline-clients),
# SHARDLINE_CLIENTS_TIMEOUT (seconds one client may take, default 120; a client takes ~10),
# SHARDLINE_CLIENTS_KEEP=1 keeps the demo directory with its logs and every client's output.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C.UTF-8
START=$SECONDS
ONLY=${1:-.}
TIMEOUT=${SHARDLINE_CLIENTS_TIMEOUT:-120}
HERE=tests/clients

# shellcheck source=tests/clients/install.sh
. "$HERE/install.sh"

echo "building shardline"
cargo build --quiet --locked --bin shardline
BIN=${CARGO_TARGET_DIR:-target}/debug/shardline

# The demo uses PORT for the proxy, PORT+1.. for the shards and PORT+1000 for metrics.
free_port() {
  python3 tests/clients/free_port.py 0 1 2 3 4 1000
}

DIR=$(mktemp -d /tmp/shardline-clients.XXXXXX)
chmod 755 "$DIR" # the shards run as the postgres user when we are root
PORT=$(free_port)
URL="postgres://app:app@127.0.0.1:$PORT/app"
# The demo serves TLS with a CA it makes once in its directory: these clients must verify it.
TLS_URL="$URL?sslmode=verify-full&sslrootcert=$DIR/demo/ca.crt"
DEMO=
start_demo() {
  "$BIN" demo --shards 4 --port "$PORT" --dir "$DIR/demo" >"$DIR/demo.log" 2>&1 &
  DEMO=$!
  for _ in $(seq 1 120); do
    grep -q "shardline is ready" "$DIR/demo.log" && return 0
    kill -0 "$DEMO" 2>/dev/null || break
    sleep 0.25
  done
  cat "$DIR/demo.log"
  echo "the demo did not start"
  return 1
}
# Ctrl-C for the demo: a graceful shutdown, then a second one (stop at once) if a transaction
# left behind holds it for more than 10 s.
stop_demo() {
  [ -n "$DEMO" ] || return 0
  kill -INT "$DEMO" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$DEMO" 2>/dev/null || break; sleep 0.25; done
  kill -INT "$DEMO" 2>/dev/null || true
  wait "$DEMO" 2>/dev/null || true
  DEMO=
}
cleanup() {
  stop_demo
  if [ -n "${SHARDLINE_CLIENTS_KEEP:-}" ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
echo "shardline demo on port $PORT"

# Client name, then the command that runs the scenario against $URL.
CLIENTS=(
  "psql|bash $HERE/psql.sh $URL"
  "pgbench -M simple|bash $HERE/pgbench.sh $URL simple"
  "pgbench -M extended|bash $HERE/pgbench.sh $URL extended"
  "pgbench -M prepared|bash $HERE/pgbench.sh $URL prepared"
  "psycopg 3|$PYTHON $HERE/python/psycopg3_client.py $URL plain"
  "psycopg 3 prepare=True|$PYTHON $HERE/python/psycopg3_client.py $URL prepare"
  "psycopg 3 pipeline|$PYTHON $HERE/python/psycopg3_client.py $URL pipeline"
  "psycopg 3 TLS verify-full|$PYTHON $HERE/python/psycopg3_client.py $TLS_URL plain"
  "psycopg2|$PYTHON $HERE/python/psycopg2_client.py $URL"
  "asyncpg|$PYTHON $HERE/python/asyncpg_client.py $URL"
  "node-postgres|node $HERE/node/pg_client.js $URL"
  "JDBC prepareThreshold=1|java -cp $JDBC_JAR $HERE/java/JdbcClient.java $URL"
  "JDBC TLS verify-full|java -cp $JDBC_JAR $HERE/java/JdbcClient.java $TLS_URL"
  "ruby-pg exec_params|ruby $HERE/ruby/pg_client.rb $URL exec_params"
  "ruby-pg exec_prepared|ruby $HERE/ruby/pg_client.rb $URL prepared"
  "sqlx|$RUST_CLIENTS/sqlx_client $URL"
  "tokio-postgres|$RUST_CLIENTS/tokio_postgres_client $URL"
)

# Where a client's report goes: its name made a file name.
out_file() { echo "$DIR/$(echo "$1" | tr -c 'A-Za-z0-9\n' '_').out"; }

# Whether the client's connections were encrypted, from the proxy's login lines: yes, no or
# mixed.
tls_use() {
  local log=$1 on off
  on=$(grep -a 'client logged in' "$log" | grep -aEc 'tls.{0,20}=.{0,12}true' || true)
  off=$(grep -a 'client logged in' "$log" | grep -aEc 'tls.{0,20}=.{0,12}false' || true)
  if [ "$on" -gt 0 ] && [ "$off" -gt 0 ]; then echo mixed
  elif [ "$on" -gt 0 ]; then echo yes
  else echo no
  fi
}

# Runs one client; its report (see tests/clients/python/scenario.py) becomes a table line.
LINES=()
FAILED=()
run_client() {
  local name=$1 cmd=$2 out rc=0 version failed skipped result details first
  out=$(out_file "$name")
  echo "running $name"
  start_demo
  # The command is word-split on purpose: it holds no quoted arguments.
  # shellcheck disable=SC2086
  timeout "$TIMEOUT" $cmd >"$out" 2>"$out.err" </dev/null || rc=$?
  version=$(awk '/^version / {sub(/^version /, ""); print; exit}' "$out")
  failed=$(awk '/^fail / {sub(/:$/, "", $2); printf "%s%s", sep, $2; sep = ", "}' "$out")
  skipped=$(awk '/^skip / {sub(/^skip /, ""); printf "%s%s", sep, $0; sep = "; "}' "$out")
  if [ "$rc" = 0 ] && [ -z "$failed" ] && grep -q '^ok ' "$out"; then
    result=pass
    details=${skipped:+skipped: $skipped}
  else
    result=FAIL
    FAILED+=("$name")
    first=$(awk '/^fail / {sub(/^fail [^:]*: /, ""); print; exit}' "$out")
    if [ -n "$failed" ]; then
      details="failed: $failed — first: ${first:0:160}"
    elif [ "$rc" = 124 ]; then
      details="timed out after $TIMEOUT s; last line: $(tail -1 "$out")"
    else
      details="exited $rc: $(tail -1 "$out.err" | cut -c1-160)"
    fi
  fi
  LINES+=("| $name | ${version:-?} | $(tls_use "$DIR/demo.log") | $result | ${details//|/\\|} |")
  stop_demo
  cp "$DIR/demo.log" "$out.demo.log"
}

for entry in "${CLIENTS[@]}"; do
  name=${entry%%|*}
  [[ $name =~ $ONLY ]] || continue
  run_client "$name" "${entry#*|}"
done

echo
echo "| client | version | TLS | result | details |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${LINES[@]}"
echo
echo "clients: $((${#LINES[@]} - ${#FAILED[@]})) passed, ${#FAILED[@]} failed ($((SECONDS - START)) s)"

for name in "${FAILED[@]}"; do
  out=$(out_file "$name")
  echo
  echo "== $name"
  sed 's/^/   /' "$out"
  tail -5 "$out.err" | sed 's/^/   stderr: /'
done
[ "${#FAILED[@]}" = 0 ]
