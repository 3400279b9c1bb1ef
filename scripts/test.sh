#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real Redis and
# Postgres (found or started by scripts/services.sh). Every test gets a fresh database
# (#[sqlx::test]) and its own Redis key namespace, so they run in parallel and leave nothing.
# Last, a small load-test run against a private gate must pass its invariants verdict, and a
# short shortcut race over two gates must see every released unit sold again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
flashgate_services

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
mkdir -p target
cargo test --workspace --locked 2>&1 | tee target/test-output.txt
count() { awk -v word="$1;" '/^test result:/ {for (i = 2; i <= NF; i++) if ($i == word) n += $(i - 1)} END {print n + 0}' target/test-output.txt; }
passed=$(count passed)
failed=$(count failed)
echo "== load-test smoke run: 2,000 buyers at a SKU with stock 100, then the invariants verdict"
FLASHGATE_PROFILE=debug ./scripts/loadtest.sh --buyers 2000 --stock 100 --concurrency 200 --quiet
echo "== shortcut race smoke run: two gates, release on one, reserve on the other at once"
FLASHGATE_PROFILE=debug ./scripts/shortcut-race.sh --rounds 20 --busy 4

# One closing line for the whole suite: every cargo test, plus the load-test verdict and the
# shortcut race as one each.
echo "tests: $((passed + 2)) passed, $failed failed"
