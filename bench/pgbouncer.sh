# Sourced by the bench scripts: starts pgbouncer (when installed) in transaction pooling in
# front of shard 0 ($SHARD0) on $PGB_PORT, with its files in $DIR; PGB_EXTRA adds lines to
# its [pgbouncer] section (TLS settings, say). Sets PGB_PROC to its pid (empty when pgbouncer
# is not installed). The caller's EXIT trap must call stop_pgbouncer. With PGB_CONFIG_ONLY
# set, only defines the functions: the caller starts pgbouncer its own way (under valgrind).
PGB_PROC=
stop_pgbouncer() {
  [ -n "$PGB_PROC" ] && kill "$PGB_PROC" 2>/dev/null || true
}

# The prefix that runs a command as the postgres user when root (pgbouncer refuses to run as
# root). setpriv execs the command, so $! of one started in the background is its own pid.
AS_PGBOUNCER_USER=()
if [ "$(id -u)" = 0 ]; then
  AS_PGBOUNCER_USER=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi

# Writes $DIR/pgbouncer.ini and its users file, and gives $DIR to the postgres user.
pgbouncer_config() {
  cat >"$DIR/pgbouncer.ini" <<INI
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
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
${PGB_EXTRA:-}
INI
  echo '"app" "app"' >"$DIR/users.txt"
  chown -R postgres "$DIR" 2>/dev/null || true
}

if command -v pgbouncer >/dev/null 2>&1 && [ -z "${PGB_CONFIG_ONLY:-}" ]; then
  pgbouncer_config
  "${AS_PGBOUNCER_USER[@]}" sh -c "ulimit -n \$(ulimit -Hn); exec pgbouncer -d $DIR/pgbouncer.ini"
  sleep 1
  PGB_PROC=$(cat "$DIR/pgbouncer.pid" 2>/dev/null || true)
fi
