# Sourced by the bench scripts: starts pgbouncer (when installed) in transaction pooling in
# front of shard 0 ($SHARD0) on $PGB_PORT, with its files in $DIR; PGB_EXTRA adds lines to
# its [pgbouncer] section (TLS settings, say). Sets PGB_PROC to its pid (empty when pgbouncer
# is not installed). The caller's EXIT trap must call stop_pgbouncer.
PGB_PROC=
stop_pgbouncer() {
  [ -n "$PGB_PROC" ] && kill "$PGB_PROC" 2>/dev/null || true
}
if command -v pgbouncer >/dev/null 2>&1; then
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
  start_pgbouncer="ulimit -n \$(ulimit -Hn); exec pgbouncer -d $DIR/pgbouncer.ini"
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- sh -c "$start_pgbouncer"; else sh -c "$start_pgbouncer"; fi
  sleep 1
  PGB_PROC=$(cat "$DIR/pgbouncer.pid" 2>/dev/null || true)
fi
