#!/usr/bin/env bash
# The test command of the README: formatting, lints, then every test against real PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=2
