# Sourced by the bench scripts: the select-only load on `users` (hash-sharded by id in the
# demo config). Every shard of the demo on $PORT gets the full 100k rows, so a direct run (on
# shard 0) and a proxied run (spread over 4 shards) do identical work per query; only the
# routing and the extra hop differ. DEMO_SHARDS=n loads n shards. Writes the pgbench script to $DIR/select.sql.
for i in $(seq 0 $((${DEMO_SHARDS:-4} - 1))); do
  psql -X -q -h 127.0.0.1 -p $((PORT + 1 + i)) -U app app -c \
    "DROP TABLE IF EXISTS users; CREATE TABLE users (id bigint PRIMARY KEY, name text);
     INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100000) g; ANALYZE users;" >/dev/null
done
cat >"$DIR/select.sql" <<'SQL'
\set id random(1, 100000)
SELECT name FROM users WHERE id = :id;
SQL
