#!/usr/bin/env bash
# The test command of the README: formatting, lints, every test against real PostgreSQL, then
# the client compatibility suite (real drivers through the proxy, docs/compatibility.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=2
bash tests/clients/run.sh
