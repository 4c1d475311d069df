#!/usr/bin/env bash
# psql through shardline: bash psql.sh URL
#
# The common scenario of docs/compatibility.md with values written as SQL literals (psql 15 has
# no bound parameters; it speaks the simple query protocol). Each literal is written in the
# form PostgreSQL prints it back, so the inserted text is the expected output. PGTZ=UTC makes
# libpq send TimeZone as a startup parameter. Report lines on stdout as the other clients.
set -uo pipefail
URL=$1
export PGTZ=UTC LC_ALL=C.UTF-8
FAILED=0

echo "version $(psql --version | awk '{print $3}')"

# psql with the report's settings: unaligned, tab-separated, NULL shown as (null), no psqlrc.
q() { psql -X -At -F $'\t' -P null='(null)' -v ON_ERROR_STOP=1 "$URL" "$@"; }

# step NAME FUNCTION: runs FUNCTION in this shell (its changes to PRESENT must last); it prints
# a note, or the reason and returns 1 on failure (psql's errors included), or the reason and
# returns 77 (psql's own exit codes are 0..3) for a part psql cannot express.
step() {
  local out rc=0
  "$2" >"$TMP/step.out" 2>&1 || rc=$?
  if [ $rc = 0 ]; then
    out=$(cat "$TMP/step.out")
    echo "ok $1${out:+ ($out)}"
  elif [ $rc = 77 ]; then
    echo "skip $1: $(tr -s '\n\t ' ' ' <"$TMP/step.out" | sed 's/ $//')"
  else
    FAILED=1
    out=$(tr -s '\n\t ' ' ' <"$TMP/step.out")
    echo "fail $1: ${out:0:300}"
  fi
}

# expect WHAT WANT GOT
expect() {
  [ "$2" = "$3" ] && return 0
  printf '%s: expected\n%s\ngot\n%s\n' "$1" "$2" "$3"
  return 1
}

# Row i (key 7^i) as SQL literals in PostgreSQL's output form, tab-separated.
row() {
  local i=$1 key=${2:-$((7 ** $1))}
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$key" $((-1000 * i)) \
    "user $i: it's \"ünï\" \\ ✓" "$(printf '00000000-0000-4000-8000-%012d' "$i")" \
    "${i}9876543210.012340" "$(printf '2024-02-29 12:%02d:56.789012+00' "$i")" \
    "$([ $((i % 2)) = 0 ] && echo t || echo f)" "$(printf '\\x00%02xff275c' "$i")" \
    "{\"i\": $i, \"s\": \"ünï\", \"tags\": [\"x\", \"y\"], \"nested\": {\"ok\": true, \"none\": null}}" \
    '{a,"b,c","q\"d",NULL}' "{$i,-$i,0}"
}
# A tab-separated row as the VALUES list of an INSERT (every field quoted, '' for ').
values() {
  local f fields out=()
  IFS=$'\t' read -r -a fields <<<"$1"
  for f in "${fields[@]}"; do
    if [ "$f" = "(null)" ]; then out+=("NULL"); else out+=("'${f//\'/\'\'}'"); fi
  done
  (IFS=,; echo "(${out[*]})")
}
null_row() { printf '%s' "$1"; printf '\t(null)%.0s' $(seq 10); }

COLS="id, n4, name, uid, amount, ts, flag, blob, doc, tags, nums"
NULL_ID=$((7 ** 17))
TX_ID=100
ROLLBACK_ID=101
# Inserted by the cross-shard transactions, committed and rolled back: four consecutive keys
# land on several of the 4 shards.
CROSS_IDS=(900001 900002 900003 900004)
CROSS_ROLLBACK_IDS=(900011 900012 900013 900014)
# Inserted by session_state's transaction that opens with a savepoint: the first is rolled back
# to it, the second committed.
SAVEPOINT_IDS=(910001 910002)
declare -A ROWS   # key -> expected row text: what was inserted
declare -A PRESENT # what the table should hold: the oracle of the later steps
for i in $(seq 1 16); do ROWS[$((7 ** i))]=$(row "$i"); done
ROWS[$NULL_ID]=$(null_row "$NULL_ID")
for k in "${!ROWS[@]}"; do PRESENT[$k]=${ROWS[$k]}; done
KEYS=($(for i in $(seq 1 16); do echo $((7 ** i)); done))

connect() { expect "SELECT 1" 1 "$(q -c 'SELECT 1')"; }
# users.id is bigserial: generated_keys leaves the key out; the other steps name it.
ddl() {
  q -q -c "DROP TABLE IF EXISTS orders" -c "DROP TABLE IF EXISTS users" \
    -c "CREATE TABLE users (id bigserial PRIMARY KEY, n4 int4, name text, uid uuid, amount numeric,
        ts timestamptz, flag bool, blob bytea, doc jsonb, tags text[], nums int4[])" \
    -c "CREATE TABLE orders (user_id int8 NOT NULL, n int4 NOT NULL, PRIMARY KEY (user_id, n))"
}
insert() {
  local k got
  got=$(for k in "${!ROWS[@]}"; do echo "INSERT INTO users ($COLS) VALUES $(values "${ROWS[$k]}");"; done | q)
  expect "command tags" "$(printf 'INSERT 0 1\n%.0s' "${!ROWS[@]}" | head -c -1)" "$got"
}
# read KEY...: the rows of those keys, one line each, in one session.
read_rows() { for k in "$@"; do echo "SELECT $COLS FROM users WHERE id = $k;"; done | q; }
read_back() {
  local k
  for k in "${!ROWS[@]}"; do expect "id $k" "${ROWS[$k]}" "$(read_rows "$k")" || return 1; done
}
update() {
  local k=${KEYS[0]} row
  expect "UPDATE" "UPDATE 1" "$(q -c "UPDATE users SET name = 'renamed ✓', n4 = n4 + 1 WHERE id = $k")" || return 1
  IFS=$'\t' read -r -a row <<<"${PRESENT[$k]}"
  row[1]=$((row[1] + 1))
  row[2]="renamed ✓"
  PRESENT[$k]=$(IFS=$'\t'; echo "${row[*]}")
  expect "after update" "${PRESENT[$k]}" "$(read_rows "$k")"
}
delete() {
  local k=${KEYS[1]}
  expect "DELETE" "DELETE 1" "$(q -c "DELETE FROM users WHERE id = $k")" || return 1
  unset "PRESENT[$k]"
  expect "after delete" "" "$(read_rows "$k")"
}
tx_commit() {
  q -q <<SQL || return 1
BEGIN;
INSERT INTO users (id, name) VALUES ($TX_ID, 'in tx');
INSERT INTO orders (user_id, n) VALUES ($TX_ID, 1), ($TX_ID, 2);
UPDATE users SET n4 = 7 WHERE id = $TX_ID;
COMMIT;
SQL
  PRESENT[$TX_ID]=$(null_row $TX_ID | awk -F'\t' -v OFS='\t' '{$2 = 7; $3 = "in tx"; print}')
  expect "committed row" "${PRESENT[$TX_ID]}" "$(read_rows $TX_ID)" || return 1
  expect "orders" 2 "$(q -c "SELECT count(*) FROM orders WHERE user_id = $TX_ID")"
}
tx_rollback() {
  local got
  got=$(q -q <<SQL
BEGIN;
INSERT INTO users (id, name) VALUES ($ROLLBACK_ID, 'rolled back');
INSERT INTO orders (user_id, n) VALUES ($ROLLBACK_ID, 1);
SELECT count(*) FROM users WHERE id = $ROLLBACK_ID;
ROLLBACK;
SQL
  ) || { echo "$got"; return 1; }
  expect "inside the transaction" 1 "$got" || return 1
  expect "rolled-back row" "" "$(read_rows $ROLLBACK_ID)" || return 1
  expect "orders" 0 "$(q -c "SELECT count(*) FROM orders WHERE user_id = $ROLLBACK_ID")"
}
# count_range FIRST LAST: the query counting the users with keys from FIRST to LAST (every shard).
count_range() { echo "SELECT count(*) FROM users WHERE id BETWEEN $1 AND $2;"; }
tx_cross_shard() {
  # One transaction holds a backend on each shard its keys need, reads its own writes from all
  # of them and commits them together.
  local k n4 got first=${CROSS_IDS[0]} last=${CROSS_IDS[-1]}
  got=$(q -q <<SQL
BEGIN;
$(for k in "${CROSS_IDS[@]}"; do echo "INSERT INTO users (id, name) VALUES ($k, 'cross shard');"; done)
UPDATE users SET n4 = 7 WHERE id = $last;
$(count_range "$first" "$last")
COMMIT;
SQL
  ) || { echo "$got"; return 1; }
  expect "count inside the transaction" "${#CROSS_IDS[@]}" "$got" || return 1
  for k in "${CROSS_IDS[@]}"; do
    n4='(null)'
    [ "$k" = "$last" ] && n4=7
    PRESENT[$k]=$(null_row "$k" | awk -F'\t' -v OFS='\t' -v n4="$n4" '{$2 = n4; $3 = "cross shard"; print}')
    expect "id $k after commit" "${PRESENT[$k]}" "$(read_rows "$k")" || return 1
  done
  # A savepoint after the first insert: the shards that join later get it replayed, and
  # ROLLBACK TO SAVEPOINT undoes the two inserts after it on whichever shards they ran.
  first=${CROSS_ROLLBACK_IDS[0]} last=${CROSS_ROLLBACK_IDS[-1]}
  got=$(q -q <<SQL
BEGIN;
INSERT INTO users (id, name) VALUES ($first, 'rolled back');
SAVEPOINT cross_shard;
$(for k in "${CROSS_ROLLBACK_IDS[@]:1:2}"; do echo "INSERT INTO users (id, name) VALUES ($k, 'rolled back');"; done)
ROLLBACK TO SAVEPOINT cross_shard;
INSERT INTO users (id, name) VALUES ($last, 'rolled back');
$(count_range "$first" "$last")
ROLLBACK;
SQL
  ) || { echo "$got"; return 1; }
  expect "count after ROLLBACK TO SAVEPOINT" 2 "$got" || return 1
  expect "count after ROLLBACK" 0 "$(count_range "$first" "$last" | q)"
}
order_limit() {
  expect "top 5" "$(printf '%s\n' "${!PRESENT[@]}" | sort -n -r | head -5)" \
    "$(q -c 'SELECT id FROM users ORDER BY id DESC LIMIT 5')"
}
count() { expect "count" "${#PRESENT[@]}" "$(q -c 'SELECT count(*) FROM users')"; }
prepared_reuse() {
  # psql 15 cannot bind parameters (\bind is psql 16) and shardline refuses SQL-level PREPARE
  # by design: the same statement text runs in 24 transactions of one session instead.
  local keys want got n k
  keys=($(printf '%s\n' "${!PRESENT[@]}" | sort -n))
  for n in $(seq 0 23); do
    k=${keys[$((n % ${#keys[@]}))]}
    echo "BEGIN; SELECT name FROM users WHERE id = $k; COMMIT;" >>"$TMP/prepared.sql"
    want+=$(echo "${PRESENT[$k]}" | cut -f3)$'\n'
  done
  got=$(q -q -f "$TMP/prepared.sql") || { echo "$got"; return 1; }
  expect "names" "${want%$'\n'}" "$got" || return 1
  echo "no bound parameters in psql 15: same statement text"
}
unique_violation() {
  local k=${KEYS[2]}
  # In one session: the error's SQLSTATE, then a statement that must still work.
  expect "session" "$(printf '23505\n%s' "$(echo "${PRESENT[$k]}" | cut -f3)")" "$(q -q -v ON_ERROR_STOP=0 <<SQL 2>/dev/null | grep -v '^ERROR'
INSERT INTO users (id) VALUES ($k);
\echo :SQLSTATE
SELECT name FROM users WHERE id = $k;
SQL
  )"
}
set_timeout() {
  # current_setting() from a row runs on that row's shard: the SET must follow the session.
  local keys=() k want script
  for k in "${KEYS[@]}"; do [ -n "${PRESENT[$k]+x}" ] && [ ${#keys[@]} -lt 6 ] && keys+=("$k"); done
  script="SET statement_timeout = '150ms';"$'\n'
  for k in "${keys[@]}"; do script+="SELECT current_setting('statement_timeout') FROM users WHERE id = $k;"$'\n'; want+="150ms"$'\n'; done
  for k in "${keys[@]:0:3}"; do script+="SELECT pg_sleep(3) FROM users WHERE id = $k;"$'\n\\echo :SQLSTATE\n'; want+="57014"$'\n'; done
  script+="RESET statement_timeout;"$'\n'
  for k in "${keys[@]}"; do script+="SELECT current_setting('statement_timeout') FROM users WHERE id = $k;"$'\n'; want+="0"$'\n'; done
  local start=$SECONDS got
  got=$(echo "$script" | q -q -v ON_ERROR_STOP=0 2>/dev/null)
  expect "session" "${want%$'\n'}" "$got" || return 1
  [ $((SECONDS - start)) -lt 8 ] || { echo "the timeout did not stop the sleeps"; return 1; }
}
session_state() {
  # Session state that the server reports or holds, which a pooling proxy must keep straight:
  # three cases psycopg's own test suite hit. psql prints what the server sends as text (the
  # timestamp in the DateStyle's form) and exposes no ParameterStatus; it cannot bind, so the
  # prepared statement of the third case is reported as a skip once the rest has passed.
  local before got want iso='2000-01-10 12:00:00' german='10.01.2000 12:00:00' k
  local ts="SELECT '2000-01-10 12:00'::timestamp;" show="SHOW DateStyle;"
  before=$(q -c 'SHOW DateStyle') || { echo "$before"; return 1; }
  # 1. A setting changed inside a transaction, then rolled back; then outside one and reset.
  got=$(q -q <<SQL
BEGIN;
SET DateStyle = 'German, YMD';
$ts
$show
ROLLBACK;
$ts
$show
SET DateStyle = 'German, YMD';
$ts
$show
RESET DateStyle;
$ts
$show
SQL
  ) || { echo "$got"; return 1; }
  want=$(printf '%s\n' "$german" "German, YMD" "$iso" "$before" "$german" "German, YMD" "$iso" "$before")
  expect "DateStyle inside a transaction, after ROLLBACK, outside one, after RESET" "$want" "$got" || return 1
  # 2. SAVEPOINT as the very first statement of a transaction, rolled back to.
  got=$(q -q <<SQL
BEGIN;
SAVEPOINT session_state;
INSERT INTO users (id, name) VALUES (${SAVEPOINT_IDS[0]}, 'after a savepoint');
ROLLBACK TO SAVEPOINT session_state;
INSERT INTO users (id, name) VALUES (${SAVEPOINT_IDS[1]}, 'after a savepoint');
COMMIT;
SQL
  ) || { echo "$got"; return 1; }
  k=${SAVEPOINT_IDS[1]}
  PRESENT[$k]=$(null_row "$k" | awk -F'\t' -v OFS='\t' '{$3 = "after a savepoint"; print}')
  expect "id ${SAVEPOINT_IDS[0]}, rolled back to the savepoint" "" "$(read_rows "${SAVEPOINT_IDS[0]}")" || return 1
  expect "id $k after commit" "${PRESENT[$k]}" "$(read_rows "$k")" || return 1
  expect "count after commit" 1 "$(count_range "${SAVEPOINT_IDS[@]}" | q)" || return 1
  # 3. DISCARD ALL outside a transaction resets the settings; statements run after it.
  k=${KEYS[2]}
  got=$(q -q <<SQL
SET DateStyle = 'German, YMD';
DISCARD ALL;
$ts
$show
SELECT name FROM users WHERE id = $k;
SQL
  ) || { echo "$got"; return 1; }
  want=$(printf '%s\n' "$iso" "$before" "$(echo "${PRESENT[$k]}" | cut -f3)")
  expect "after DISCARD ALL" "$want" "$got" || return 1
  echo "prepared statement around DISCARD ALL: psql 15 cannot bind (no \\bind), SQL-level PREPARE is refused by shardline; settings checked (the rest passed)"
  return 77
}
generated_keys() {
  # users.id is bigserial and these inserts leave it out: the proxy generates each key, routes
  # the row by it and returns it; a read by the returned key (routed to that key's shard) must
  # find the row. One insert of three rows (RETURNING in VALUES order), then two of one row.
  local names=() ids=() got k i
  for i in 1 2 3 4 5; do names+=("generated $i: ünï ✓"); done
  got=$(q -q <<SQL
INSERT INTO users (name) VALUES ('${names[0]}'), ('${names[1]}'), ('${names[2]}') RETURNING id;
INSERT INTO users (name) VALUES ('${names[3]}') RETURNING id;
INSERT INTO users (name) VALUES ('${names[4]}') RETURNING id;
SQL
  ) || { echo "$got"; return 1; }
  mapfile -t ids <<<"$got"
  [ "${#ids[@]}" = 5 ] || { echo "5 rows inserted, returned: $got"; return 1; }
  for k in "${ids[@]}"; do [[ $k =~ ^[0-9]+$ ]] || { echo "ids returned: $got"; return 1; }; done
  [ -z "$(printf '%s\n' "${ids[@]}" | sort | uniq -d)" ] || { echo "repeated ids returned: $got"; return 1; }
  for i in "${!ids[@]}"; do
    k=${ids[$i]}
    expect "id $k (ids ${ids[*]})" "${names[$i]}" "$(q -c "SELECT name FROM users WHERE id = $k")" || return 1
    PRESENT[$k]=$(null_row "$k" | awk -F'\t' -v OFS='\t' -v name="${names[$i]}" '{$3 = name; print}')
  done
  echo "literals: psql 15 cannot bind"
}
cancel() {
  # Ctrl-C (SIGINT) makes psql send a CancelRequest for its running statement.
  local k=${KEYS[2]} start=$SECONDS pid err
  psql -X -At -v VERBOSITY=verbose "$URL" -c "SELECT pg_sleep(5) FROM users WHERE id = $k" \
    >/dev/null 2>"$TMP/cancel.err" &
  pid=$!
  sleep 0.5
  kill -INT "$pid"
  wait "$pid"
  err=$(cat "$TMP/cancel.err")
  [[ $err == *"57014"* ]] || { echo "expected SQLSTATE 57014, got: $err"; return 1; }
  [ $((SECONDS - start)) -lt 4 ] || { echo "the cancel did not stop the sleep"; return 1; }
  expect "after the cancel" "$(echo "${PRESENT[$k]}" | cut -f3)" "$(q -c "SELECT name FROM users WHERE id = $k")"
}
batch_insert() {
  # One multi-row INSERT whose rows belong to several shards.
  local i k sql="INSERT INTO users ($COLS) VALUES " sep=""
  for i in $(seq 1 8); do sql+="$sep$(values "$(row "$i" $((-(7 ** i))))")"; sep=", "; done
  expect "command tag" "INSERT 0 8" "$(q -c "$sql")" || return 1
  for i in $(seq 1 8); do
    k=$((-(7 ** i)))
    expect "id $k" "$(row "$i" "$k")" "$(read_rows "$k")" || return 1
  done
  echo "one multi-row INSERT"
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
step connect connect
[ $FAILED = 0 ] || exit 1
for s in ddl insert read_back update delete tx_commit tx_rollback tx_cross_shard order_limit count \
  prepared_reuse unique_violation set_timeout session_state generated_keys cancel batch_insert; do
  step "$s" "$s"
done
exit $FAILED
