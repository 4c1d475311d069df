#!/usr/bin/env bash
# Builds shardline with profile-guided optimisation (PGO) and prints the binary's path last.
#
# An instrumented build serves a training load on the demo cluster and counts how often each
# branch and call ran; the release build is then laid out and inlined by those counts. The
# load is a mix, not the benchmark alone, so no path is left cold: single-shard reads in the
# simple, extended and prepared protocols, single-shard write transactions, transactions over
# two shards (two-phase commit), scatter reads that merge rows and add up counts, and a COPY.
#
#   bash scripts/pgo_build.sh [seconds per load, default 6]
#   SHARDLINE_BIN=$(bash scripts/pgo_build.sh | tail -1) bash bench/pgbench_proxy.sh
#
# Needs llvm-profdata of the LLVM version rustc uses (`rustc -vV`): `rustup component add
# llvm-tools` puts it in rustc's sysroot; Debian packages it as llvm-N (apt install llvm-22 for
# rustc 1.95). The two builds keep their own target directories under $CARGO_TARGET_DIR (or
# target/): pgo-generate and pgo-use. About ten minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-6}
BASE=${CARGO_TARGET_DIR:-$PWD/target}
PORT=${BENCH_PORT:-16932}
DIR=$(mktemp -d /tmp/shardline-pgo.XXXXXX)
chmod 755 "$DIR"
# Apart from $DIR, which stopping the demo removes; a fixed path, so the flags (and the
# instrumented build) stay the same from one run to the next.
PROFILES=$BASE/pgo-generate/profiles
export PGPASSWORD=app

llvm_major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PROFDATA=""
for candidate in "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata "llvm-profdata-$llvm_major"; do
  if command -v "$candidate" >/dev/null; then
    PROFDATA=$candidate
    break
  fi
done
if [ -z "$PROFDATA" ]; then
  echo "llvm-profdata for LLVM $llvm_major not found: rustup component add llvm-tools, or apt install llvm-$llvm_major" >&2
  exit 1
fi

echo "1/3: instrumented build ($BASE/pgo-generate)" >&2
CARGO_TARGET_DIR="$BASE/pgo-generate" RUSTFLAGS="-Cprofile-generate=$PROFILES" \
  cargo build --release --quiet --bin shardline
# Build scripts and proc macros ran instrumented too (and earlier runs left counts): only
# this training's are kept.
rm -rf "$PROFILES"

echo "2/3: training load, ${SECS} s per part" >&2
export SHARDLINE_BIN="$BASE/pgo-generate/release/shardline"
# shellcheck source=bench/demo.sh
. bench/demo.sh
trap stop_demo EXIT
# shellcheck source=bench/select_load.sh
. bench/select_load.sh
load() { # MODE SCRIPT...: pgbench through the proxy
  local mode=$1
  shift
  pgbench -n -h 127.0.0.1 -p "$PORT" -U app -c 8 -j 1 -T "$SECS" -M "$mode" "$@" app >"$DIR/pgbench.out" 2>&1 ||
    { cat "$DIR/pgbench.out" >&2; exit 1; }
}
# Writes lock their rows in increasing id order, so concurrent transactions cannot deadlock.
cat >"$DIR/write.sql" <<'SQL'
\set id random(1, 100000)
BEGIN;
UPDATE users SET name = name WHERE id = :id;
SELECT name FROM users WHERE id = :id;
COMMIT;
SQL
cat >"$DIR/two_shards.sql" <<'SQL'
\set a random(1, 50000)
\set b :a + 50000
BEGIN;
UPDATE users SET name = name WHERE id = :a;
UPDATE users SET name = name WHERE id = :b;
COMMIT;
SQL
cat >"$DIR/scatter.sql" <<'SQL'
SELECT count(*) FROM users;
SELECT id, name FROM users ORDER BY id LIMIT 20;
SQL
for mode in simple extended prepared; do
  load "$mode" -f "$DIR/select.sql"
done
for mode in simple extended; do
  load "$mode" -f "$DIR/write.sql@6" -f "$DIR/two_shards.sql@3" -f "$DIR/scatter.sql@1"
done
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U app app >/dev/null <<'SQL'
\copy users FROM PROGRAM 'seq 100001 120000 | sed "s/.*/&\tuser &/"'
DELETE FROM users WHERE id > 100000;
SQL
# The proxy writes its counts when it exits.
stop_demo
trap - EXIT

echo "3/3: optimised build ($BASE/pgo-use)" >&2
"$PROFDATA" merge -o "$PROFILES/merged.profdata" "$PROFILES"/*.profraw
# Named by content: cargo rebuilds when the flags change, and a new profile changes them.
mkdir -p "$BASE/pgo-use"
PROFILE="$BASE/pgo-use/$(sha256sum "$PROFILES/merged.profdata" | cut -c1-16).profdata"
mv "$PROFILES/merged.profdata" "$PROFILE"
CARGO_TARGET_DIR="$BASE/pgo-use" RUSTFLAGS="-Cprofile-use=$PROFILE" \
  cargo build --release --quiet --bin shardline
echo "$BASE/pgo-use/release/shardline"
