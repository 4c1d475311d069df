# Sourced by the bench scripts: starts pgbouncer (when installed) in transaction pooling in
# front of shard 0 ($SHARD0) on $PGB_PORT, with its files in $DIR; PGB_EXTRA adds lines to
# its [pgbouncer] section (TLS settings, say). Sets PGB_PROC to its pid (empty when pgbouncer
# is not installed). The caller's EXIT trap must call stop_pgbouncer. With PGB_CONFIG_ONLY
# set, only defines the functions: the caller starts pgbouncer its own way (under valgrind).
#
# PGBOUNCERS=n (default 1) starts n of them on the one port with so_reuseport, the kernel
# spreading the clients' connections among them: how PgBouncer, single-threaded, uses more
# than one core. Each has a pool of its own; PGB_PROC then lists their pids, separated by
# spaces (bench/measure.sh adds up their CPU and context switches). They run in one session
# of their own (setsid, as -d would), so the kernel schedules them as one group (autogroup),
# as it schedules the threads of one shardline: n PgBouncers each in a session of its own
# would get n groups' share of the CPU where a proxy with n threads gets one, and be
# preempted far less (measured in bench/RESULTS.md, "the scheduler's groups").
PGB_PROC=
stop_pgbouncer() {
  local pid
  for pid in $PGB_PROC; do kill "$pid" 2>/dev/null || true; done
}

# The prefix that runs a command as the postgres user when root (pgbouncer refuses to run as
# root). setpriv execs the command, so $! of one started in the background is its own pid.
AS_PGBOUNCER_USER=()
if [ "$(id -u)" = 0 ]; then
  AS_PGBOUNCER_USER=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi

# Writes $DIR/pgbouncer$1.ini (logging to pgbouncer$1.log, its pid in pgbouncer$1.pid) and
# the users file, and gives $DIR to the postgres user.
pgbouncer_config() { # [SUFFIX]
  cat >"$DIR/pgbouncer${1:-}.ini" <<INI
[databases]
app = host=127.0.0.1 port=$SHARD0 dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
auth_type = plain
auth_file = $DIR/users.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 20000
unix_socket_dir =
logfile = $DIR/pgbouncer${1:-}.log
pidfile = $DIR/pgbouncer${1:-}.pid
$([ "${PGBOUNCERS:-1}" -gt 1 ] && echo "so_reuseport = 1")
${PGB_EXTRA:-}
INI
  echo '"app" "app"' >"$DIR/users.txt"
  chown -R postgres "$DIR" 2>/dev/null || true
}

# The file name suffix of the k-th PgBouncer: none for the first.
pgbouncer_suffix() { [ "$1" -gt 1 ] && echo "-$1" || true; }

if command -v pgbouncer >/dev/null 2>&1 && [ -z "${PGB_CONFIG_ONLY:-}" ]; then
  serve=""
  for k in $(seq 1 "${PGBOUNCERS:-1}"); do
    pgbouncer_config "$(pgbouncer_suffix "$k")"
    serve="$serve pgbouncer $DIR/pgbouncer$(pgbouncer_suffix "$k").ini >/dev/null 2>&1 &"
  done
  setsid "${AS_PGBOUNCER_USER[@]}" sh -c "ulimit -n \$(ulimit -Hn); $serve wait" &
  sleep 1
  for k in $(seq 1 "${PGBOUNCERS:-1}"); do
    pid=$(cat "$DIR/pgbouncer$(pgbouncer_suffix "$k").pid" 2>/dev/null || true)
    if [ -n "$pid" ]; then PGB_PROC="${PGB_PROC:+$PGB_PROC }$pid"; fi
  done
fi
