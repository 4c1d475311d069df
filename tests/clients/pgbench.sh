#!/usr/bin/env bash
# pgbench through shardline: bash pgbench.sh URL {simple|extended|prepared}
#
# pgbench cannot compare values, so its part of the scenario is a load with an exact oracle:
# 4 clients run 50 transactions each (insert-or-nothing, update, read by a random key, in
# BEGIN/COMMIT) in the given protocol mode; prepared mode keeps named statements that the proxy
# must re-prepare on every backend the transactions land on. Afterwards the hits counted in
# the table must add up to the transactions pgbench reports, and no transaction may have failed.
# Then generated_keys: the same load inserting rows without their key (users.id is bigserial),
# so the proxy generates it; each transaction updates its row by the id RETURNING gave.
# Report lines on stdout as the other clients.
set -uo pipefail
URL=$1
MODE=$2
CLIENTS=4
TXS=50
echo "version $(pgbench --version | awk '{print $3}')"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
q() { psql -X -At -v ON_ERROR_STOP=1 "$URL" "$@"; }

if ! out=$(q -c "SELECT 1" 2>&1); then
  echo "fail connect: $out"
  exit 1
fi
echo "ok connect"

if ! out=$(q -q -c "DROP TABLE IF EXISTS orders" -c "DROP TABLE IF EXISTS users" \
  -c "CREATE TABLE users (id bigserial PRIMARY KEY, n4 int4 NOT NULL, hits int8 NOT NULL)" 2>&1); then
  echo "fail ddl: $out"
  exit 1
fi
echo "ok ddl"

cat >"$TMP/tx.sql" <<'SQL'
\set id random(1, 1000000000000)
BEGIN;
INSERT INTO users (id, n4, hits) VALUES (:id, 0, 0) ON CONFLICT (id) DO NOTHING;
UPDATE users SET hits = hits + 1, n4 = n4 + 1 WHERE id = :id;
SELECT hits FROM users WHERE id = :id;
COMMIT;
SQL
out=$(pgbench -n -M "$MODE" -c $CLIENTS -j 2 -t $TXS -f "$TMP/tx.sql" "$URL" 2>&1)
processed=$(echo "$out" | awk -F': ' '/actually processed/ {split($2, a, "/"); print a[1]}')
failed=$(echo "$out" | awk -F': ' '/number of failed transactions/ {split($2, a, " "); print a[1]}')
if [ "$processed" != $((CLIENTS * TXS)) ] || [ "${failed:-0}" != 0 ]; then
  echo "fail load: $(echo "$out" | grep -iE 'error|processed|failed' | head -3 | tr '\n' ' ')"
  exit 1
fi
echo "ok load"

# The oracle: every committed transaction added one hit to one row and one to its n4.
sums=$(q -F ' ' -c "SELECT sum(hits), sum(n4) FROM users" 2>&1)
if [ "$sums" != "$processed $processed" ]; then
  echo "fail verify: sum(hits), sum(n4) = $sums, expected $processed each"
  exit 1
fi
echo "ok verify"

# generated_keys: n4 = -1 marks these rows (the load's rows have n4 >= 1). The UPDATE by the
# returned id finds the row only if the proxy put it on that id's shard.
cat >"$TMP/generated.sql" <<'SQL'
BEGIN;
INSERT INTO users (n4, hits) VALUES (-1, 1) RETURNING id \gset
UPDATE users SET hits = hits + 1 WHERE id = :id;
COMMIT;
SQL
out=$(pgbench -n -M "$MODE" -c $CLIENTS -j 2 -t $TXS -f "$TMP/generated.sql" "$URL" 2>&1)
processed=$(echo "$out" | awk -F': ' '/actually processed/ {split($2, a, "/"); print a[1]}')
failed=$(echo "$out" | awk -F': ' '/number of failed transactions/ {split($2, a, " "); print a[1]}')
if [ "$processed" != $((CLIENTS * TXS)) ] || [ "${failed:-0}" != 0 ]; then
  echo "fail generated_keys: $(echo "$out" | grep -iE 'error|processed|failed' | head -3 | tr '\n' ' ')"
  exit 1
fi
ids=$(q -c "SELECT id FROM users WHERE n4 = -1" 2>&1)
rows=$(echo "$ids" | grep -c '^[0-9][0-9]*$')
repeated=$(echo "$ids" | sort | uniq -d | head -3 | tr '\n' ' ')
updated=$(q -c "SELECT count(*) FROM users WHERE n4 = -1 AND hits = 2" 2>&1)
if [ "$rows" != "$processed" ] || [ -n "$repeated" ] || [ "$updated" != "$processed" ]; then
  echo "fail generated_keys: $rows rows with ids (repeated: ${repeated:-none}), $updated updated by their id, expected $processed"
  exit 1
fi
echo "ok generated_keys"
