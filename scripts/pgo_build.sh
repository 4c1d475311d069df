#!/usr/bin/env bash
# Builds shardline with profile-guided optimisation (PGO) and prints the binary's path last.
#
# An instrumented build serves a training load on the demo cluster and counts how often each
# branch and call ran; the release build is then laid out and inlined by those counts. The
# load is a mix, not the benchmark alone, so no path is left cold: single-shard reads in the
# simple, extended and prepared protocols, single-shard write transactions, transactions over
# two shards (two-phase commit), scatter reads that merge rows and add up counts, and a COPY.
#
# When LLVM's BOLT is installed (apt install bolt-22 for rustc 1.95's LLVM 22), a fourth stage
# lays the optimised binary's machine code out again: BOLT instruments it, the same load runs
# through it, and BOLT groups the code that ran together (hot blocks and functions side by
# side, the cold ones apart), so the hot path spans fewer cache lines and pages. NO_BOLT=1
# skips it; if BOLT fails, the profile-guided binary is the result.
#
#   bash scripts/pgo_build.sh [seconds per load, default 6]
#   SHARDLINE_BIN=$(bash scripts/pgo_build.sh | tail -1) bash bench/pgbench_proxy.sh
#
# Needs llvm-profdata of the LLVM version rustc uses (`rustc -vV`): `rustup component add
# llvm-tools` puts it in rustc's sysroot; Debian packages it as llvm-N (apt install llvm-22 for
# rustc 1.95). The two builds keep their own target directories under $CARGO_TARGET_DIR (or
# target/): pgo-generate and pgo-use (where BOLT's binary is shardline-bolt, and its log
# bolt.log). About ten minutes on two cores, and two more for BOLT.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-6}
BASE=${CARGO_TARGET_DIR:-$PWD/target}
PORT=${BENCH_PORT:-16932}
# Apart from the demo's directory, which stopping the demo removes; a fixed path, so the
# flags (and the instrumented build) stay the same from one run to the next.
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
# BOLT, LLVM's post-link optimiser, when installed: the PGO build's machine code is laid out
# again by where a second training run spent its time.
# Its own LLVM's first: an older BOLT takes other options.
BOLT=""
for candidate in "llvm-bolt-$llvm_major" "/usr/lib/llvm-$llvm_major/bin/llvm-bolt" llvm-bolt; do
  if [ "${NO_BOLT:-0}" != 1 ] && command -v "$candidate" >/dev/null; then
    BOLT=$candidate
    break
  fi
done
STAGES=$([ -n "$BOLT" ] && echo 4 || echo 3)
# Symbols in Rust's v0 mangling, in every stage (a profile names the functions it counted):
# the legacy one writes `::` as `..`, and BOLT takes a path through a module named `warm` or
# `cold` (as in `health::warm`) for a fragment split off a function.
MANGLING=-Csymbol-mangling-version=v0

echo "1/$STAGES: instrumented build ($BASE/pgo-generate)" >&2
CARGO_TARGET_DIR="$BASE/pgo-generate" RUSTFLAGS="$MANGLING -Cprofile-generate=$PROFILES" \
  cargo build --release --quiet --bin shardline
# Build scripts and proc macros ran instrumented too (and earlier runs left counts): only
# this training's are kept.
rm -rf "$PROFILES"

# Serves the training load through the shardline binary $1 (on the demo cluster), which
# writes its counts when it exits.
train() { # BIN
  export SHARDLINE_BIN=$1
  DIR=$(mktemp -d /tmp/shardline-pgo.XXXXXX)
  chmod 755 "$DIR"
  # shellcheck source=bench/demo.sh
  . bench/demo.sh
  trap stop_demo EXIT
  # shellcheck source=bench/select_load.sh
  . bench/select_load.sh
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
}

load() { # MODE SCRIPT...: pgbench through the proxy
  local mode=$1
  shift
  pgbench -n -h 127.0.0.1 -p "$PORT" -U app -c 8 -j 1 -T "$SECS" -M "$mode" "$@" app >"$DIR/pgbench.out" 2>&1 ||
    { cat "$DIR/pgbench.out" >&2; exit 1; }
}

echo "2/$STAGES: training load, ${SECS} s per part" >&2
train "$BASE/pgo-generate/release/shardline"

echo "3/$STAGES: optimised build ($BASE/pgo-use)" >&2
"$PROFDATA" merge -o "$PROFILES/merged.profdata" "$PROFILES"/*.profraw
# Named by content: cargo rebuilds when the flags change, and a new profile changes them.
mkdir -p "$BASE/pgo-use"
PROFILE="$BASE/pgo-use/$(sha256sum "$PROFILES/merged.profdata" | cut -c1-16).profdata"
mv "$PROFILES/merged.profdata" "$PROFILE"
# BOLT rearranges whole functions only in a binary that kept its relocations.
RELOCS=${BOLT:+-Clink-args=-Wl,--emit-relocs}
CARGO_TARGET_DIR="$BASE/pgo-use" RUSTFLAGS="$MANGLING -Cprofile-use=$PROFILE $RELOCS" \
  cargo build --release --quiet --bin shardline
OPTIMISED=$BASE/pgo-use/release/shardline
if [ -z "$BOLT" ]; then
  echo "$OPTIMISED"
  exit 0
fi

echo "4/$STAGES: layout by BOLT ($BOLT)" >&2
FDATA=$BASE/pgo-use/bolt.fdata
LOG=$BASE/pgo-use/bolt.log
rm -f "$FDATA"
# BOLT warns of every function it leaves as it is (ring's hand-written assembly): to its log.
# If it fails, the profile-guided binary is the result.
bolt() {
  "$BOLT" "$OPTIMISED" "$@" >>"$LOG" 2>&1 && return
  tail -5 "$LOG" >&2
  echo "BOLT failed (its log: $LOG); the profile-guided binary is not laid out again" >&2
  echo "$OPTIMISED"
  exit 0
}
: >"$LOG"
bolt -instrument -instrumentation-file="$FDATA" -o "$OPTIMISED.bolt-instrumented"
train "$OPTIMISED.bolt-instrumented"
bolt -o "$OPTIMISED-bolt" -data="$FDATA" -reorder-blocks=ext-tsp -reorder-functions=cdsort \
  -split-functions -split-all-cold -icf=all -use-gnu-stack -update-debug-sections
echo "$OPTIMISED-bolt"
