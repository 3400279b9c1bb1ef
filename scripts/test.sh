#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real Redis and
# Postgres (found or started by scripts/services.sh). Every test gets a fresh database
# (#[sqlx::test]) and its own Redis key namespace, so they run in parallel and leave nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
flashgate_services

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
