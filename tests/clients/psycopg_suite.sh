#!/usr/bin/env bash
# psycopg's own test suite against shardline: a core subset of psycopg 3's tests (connection,
# cursors, COPY, prepared statements, pipeline, transactions, errors, server cursors, two-phase
# commit, LISTEN/NOTIFY, sql composition, common types; sync tests only) run three times:
#
#   direct       straight against shard0 of a `shardline demo --shards 4` (the default shard,
#                where everything psycopg's tests touch lives; same user/password/database)
#   transaction  through the demo's proxy (transaction pooling, the demo's config)
#   session      through a second shardline (`--config`, the demo's shards.yaml with
#                `pool: {mode: session}`, its own port) in front of the same shards
#
# Each target gets a freshly started demo (data directory reused within the run). Prints a
# markdown table `| target | passed | failed | errors | skipped |` and writes to the results
# directory (printed at the end):
#   <target>.xml / .log          pytest's junit XML and output
#   <target>.failed              node ids that failed or errored
#   <target>.failures.tsv        node id, status, first line of the message
#   regressions.txt              per proxy mode, the tests that passed direct but failed or
#                                errored through it, with their message
#
# Run (from anywhere; takes ~10-20 min on 2 cores, CPU heavy):
#
#   PSYCOPG_SRC=/path/to/psycopg bash tests/clients/psycopg_suite.sh [extra pytest args]
#
# PSYCOPG_SRC (required) is a psycopg git checkout or a bare git dir holding commit
# $PSYCOPG_COMMIT below (its tree is extracted, the checkout is never touched), or a plain
# directory of psycopg's sources (used as is, commit unchecked). Extra arguments go to pytest
# (e.g. `-k copy`, `-x`).
#
# Environment:
#   PSYCOPG_SUITE_DIR      venv, extracted sources and results (default /var/tmp/psycopg-suite);
#                          results go to $PSYCOPG_SUITE_DIR/results (replaced on each run)
#   PSYCOPG_SUITE_TARGETS  targets to run, in order (default "direct transaction session")
#   PSYCOPG_SUITE_FILES    test files (default: the core subset below; missing ones skipped)
#   PSYCOPG_SUITE_TEST_TIMEOUT  seconds one test may take (pytest-timeout, default 30)
#   PSYCOPG_SUITE_RUN_TIMEOUT   seconds one target's whole pytest run may take (default 2400)
#   SHARDLINE_BIN          shardline binary to use; default: `cargo build --release --locked
#                          --bin shardline` in $CARGO_TARGET_DIR (or target/)
#   PSYCOPG_SUITE_KEEP=1   keep the run directory (demo data and logs)
#
# The venv holds psycopg from the extracted source with its `test` extra plus pytest-timeout,
# pinned below (reinstalled when the pins or the commit change); psycopg runs its pure Python
# implementation (PSYCOPG_IMPL=python) over the system libpq. pytest runs with a fixed test
# order (-p no:randomly). psycopg's conftest needs pytest's cache plugin (it records segfaults
# there), so instead of -p no:cacheprovider the cache goes to the results directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export LC_ALL=C.UTF-8

PSYCOPG_COMMIT=c079c37c959a89a8684a3d3858cbaff7e5543e71
PINS=(
  "pytest==9.2.0" "pytest-timeout==2.4.0" "pytest-randomly==5.1.0" "pytest-cov==7.1.0"
  "anyio==4.16.0" "pproxy==2.7.9" "mypy==2.4.1" "typing-extensions==4.16.0"
)
DEFAULT_FILES="tests/test_connection.py tests/test_cursor.py tests/test_cursor_common.py
  tests/test_copy.py tests/test_prepared.py tests/test_pipeline.py tests/test_transaction.py
  tests/test_errors.py tests/test_cursor_server.py tests/test_tpc.py tests/test_notify.py
  tests/test_sql.py tests/types/test_numeric.py tests/types/test_datetime.py
  tests/types/test_string.py tests/types/test_array.py tests/types/test_json.py
  tests/types/test_uuid.py"

SUITE_DIR=${PSYCOPG_SUITE_DIR:-/var/tmp/psycopg-suite}
TARGETS=${PSYCOPG_SUITE_TARGETS:-direct transaction session}
FILES=${PSYCOPG_SUITE_FILES:-$DEFAULT_FILES}
TEST_TIMEOUT=${PSYCOPG_SUITE_TEST_TIMEOUT:-30}
RUN_TIMEOUT=${PSYCOPG_SUITE_RUN_TIMEOUT:-2400}
OUT=$SUITE_DIR/results
START=$SECONDS

die() { echo "psycopg_suite: $*" >&2; exit 1; }

for t in $TARGETS; do
  case $t in direct | transaction | session) ;; *) die "unknown target '$t' (direct, transaction, session)" ;; esac
done

# --- psycopg's sources, at the pinned commit -------------------------------------------------
[ -n "${PSYCOPG_SRC:-}" ] || die "set PSYCOPG_SRC to a psycopg checkout or git dir holding commit $PSYCOPG_COMMIT
  e.g. PSYCOPG_SRC=/work/.mirror/psycopg+psycopg/repo bash tests/clients/psycopg_suite.sh"
[ -d "$PSYCOPG_SRC" ] || die "PSYCOPG_SRC=$PSYCOPG_SRC is not a directory"
mkdir -p "$SUITE_DIR"
if git -C "$PSYCOPG_SRC" rev-parse --verify -q "$PSYCOPG_COMMIT^{commit}" >/dev/null 2>&1; then
  SRC=$SUITE_DIR/src-$PSYCOPG_COMMIT
  if [ ! -f "$SRC/.extracted" ]; then
    echo "extracting psycopg $PSYCOPG_COMMIT into $SRC"
    rm -rf "$SRC"
    mkdir -p "$SRC"
    git -C "$PSYCOPG_SRC" archive "$PSYCOPG_COMMIT" | tar -x -C "$SRC"
    touch "$SRC/.extracted"
  fi
  SRC_ID=$PSYCOPG_COMMIT
elif git -C "$PSYCOPG_SRC" rev-parse --git-dir >/dev/null 2>&1; then
  die "PSYCOPG_SRC=$PSYCOPG_SRC is a git repository without commit $PSYCOPG_COMMIT (git fetch it)"
elif [ -f "$PSYCOPG_SRC/psycopg/pyproject.toml" ] && [ -d "$PSYCOPG_SRC/tests" ]; then
  echo "warning: $PSYCOPG_SRC is not a git repository; using it as is (commit not checked)" >&2
  SRC=$(cd "$PSYCOPG_SRC" && pwd)
  SRC_ID=$SRC
else
  die "PSYCOPG_SRC=$PSYCOPG_SRC is neither a git repository nor a psycopg source tree (psycopg/pyproject.toml, tests/)"
fi

# --- the venv ---------------------------------------------------------------------------------
VENV=$SUITE_DIR/venv
STAMP="$SRC_ID ${PINS[*]}"
if [ ! -f "$VENV/.stamp" ] || [ "$(cat "$VENV/.stamp")" != "$STAMP" ]; then
  echo "installing psycopg (pure Python) and its test requirements into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$SRC/psycopg[test]" "${PINS[@]}"
  echo "$STAMP" >"$VENV/.stamp"
fi
export PSYCOPG_IMPL=python
"$VENV/bin/python" -c 'import psycopg; print("psycopg", psycopg.__version__, "libpq", psycopg.pq.version(), psycopg.pq.__impl__)'

SELECTED=()
for f in $FILES; do
  if [ -f "$SRC/$f" ]; then SELECTED+=("$f"); else echo "skipping $f: not in this psycopg"; fi
done
[ "${#SELECTED[@]}" -gt 0 ] || die "none of the test files exist in $SRC"

# --- shardline --------------------------------------------------------------------------------
RUN=$(mktemp -d /var/tmp/psycopg-suite-run.XXXXXX)
chmod 755 "$RUN" # the shards run as the postgres OS user when we are root
if [ -n "${SHARDLINE_BIN:-}" ]; then
  [ -x "$SHARDLINE_BIN" ] || die "SHARDLINE_BIN=$SHARDLINE_BIN is not executable"
else
  echo "building shardline (release)"
  cargo build --quiet --release --locked --bin shardline
  SHARDLINE_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/shardline
fi
# A copy, so that a rebuild by someone else during the run changes nothing between targets.
cp "$SHARDLINE_BIN" "$RUN/shardline"
BIN=$RUN/shardline

# The demo uses PORT for the proxy, PORT+1.. for the shards and PORT+1000 for metrics; the
# session-pooling proxy listens on PORT+5.
PORT=$(python3 "$REPO/tests/clients/free_port.py" 0 1 2 3 4 1000)
SESSION_PORT=
DSN_OPTS="user=app password=app dbname=app connect_timeout=10"

DEMO=
SESSION=
wait_for() { # LOG PID TEXT
  for _ in $(seq 1 240); do
    grep -q "$3" "$1" && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.25
  done
  cat "$1"
  return 1
}
stop_pid() { # graceful stop (SIGINT), then a second one (stop at once) after 10 s
  kill -INT "$1" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$1" 2>/dev/null || break; sleep 0.25; done
  kill -INT "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
start_demo() { # LOG
  "$BIN" demo --shards 4 --port "$PORT" --dir "$RUN/demo" >"$1" 2>&1 &
  DEMO=$!
  wait_for "$1" "$DEMO" "shardline is ready" || die "the demo did not start"
}
start_session_proxy() { # LOG
  # Chosen now: a port free at the start may since be the local end of a client connection.
  SESSION_PORT=$(python3 "$REPO/tests/clients/free_port.py" 0)
  sed -e "s/^listen: .*/listen: 127.0.0.1:$SESSION_PORT/" -e '/^metrics_listen:/d' \
    -e 's/^  mode: transaction$/  mode: session/' "$RUN/demo/shards.yaml" >"$RUN/session.yaml"
  grep -q '^  mode: session$' "$RUN/session.yaml" || die "could not set session pooling in $RUN/session.yaml"
  "$BIN" --config "$RUN/session.yaml" --no-watch >"$1" 2>&1 &
  SESSION=$!
  wait_for "$1" "$SESSION" "shardline listening" || die "the session-pooling proxy did not start"
}
stop_all() {
  [ -z "$SESSION" ] || stop_pid "$SESSION"
  [ -z "$DEMO" ] || stop_pid "$DEMO"
  SESSION=
  DEMO=
}
cleanup() {
  stop_all
  if [ -n "${PSYCOPG_SUITE_KEEP:-}" ]; then echo "kept $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
# The pool mode a proxy reports on its admin console.
pool_mode() {
  PGPASSWORD=admin PGCONNECT_TIMEOUT=10 psql -XAt -h 127.0.0.1 -p "$1" -U admin -d shardline \
    -c 'SHOW CONFIG' | awk -F'|' '$1 == "pool_mode" {print $2}'
}

rm -rf "$OUT"
mkdir -p "$OUT"
echo "shardline demo on port $PORT (shards $((PORT + 1))-$((PORT + 4)); the session-pooling proxy gets a free port when it starts)"
echo "psycopg tests: ${SELECTED[*]}"

for target in $TARGETS; do
  echo "== $target"
  start_demo "$OUT/$target.demo.log"
  case $target in
    direct) DSN="host=127.0.0.1 port=$((PORT + 1)) $DSN_OPTS" ;;
    transaction)
      DSN="host=127.0.0.1 port=$PORT $DSN_OPTS"
      mode=$(pool_mode "$PORT")
      [ "$mode" = transaction ] || die "the demo's proxy reports pool_mode '$mode', not transaction"
      ;;
    session)
      start_session_proxy "$OUT/$target.proxy.log"
      DSN="host=127.0.0.1 port=$SESSION_PORT $DSN_OPTS"
      mode=$(pool_mode "$SESSION_PORT")
      [ "$mode" = session ] || die "the session proxy reports pool_mode '$mode', not session"
      ;;
  esac
  echo "   dsn: $DSN"
  rm -rf "$OUT/$target.cache"
  rc=0
  (cd "$SRC" && timeout -k 30 "$RUN_TIMEOUT" "$VENV/bin/python" -m pytest \
    -p no:randomly -o cache_dir="$OUT/$target.cache" -o junit_family=xunit1 \
    --junitxml="$OUT/$target.xml" --timeout="$TEST_TIMEOUT" --test-dsn "$DSN" \
    -q -rfE --color=no "${SELECTED[@]}" "$@") >"$OUT/$target.log" 2>&1 </dev/null || rc=$?
  # 0: all passed, 1: some failed; anything else means pytest itself was stopped or broken.
  case $rc in
    0 | 1) echo "   $(tail -1 "$OUT/$target.log")" ;;
    124) echo "   pytest ran past $RUN_TIMEOUT s and was stopped; last lines:"; tail -3 "$OUT/$target.log" ;;
    *) echo "   pytest exited $rc; last lines:"; tail -3 "$OUT/$target.log" ;;
  esac
  rm -rf "$OUT/$target.cache"
  stop_all
done

echo
# shellcheck disable=SC2086
"$VENV/bin/python" "$REPO/tests/clients/psycopg_suite_report.py" "$OUT" $TARGETS
echo
echo "results in $OUT ($((SECONDS - START)) s): <target>.failed, <target>.failures.tsv, regressions.txt, <target>.log"
