#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests against real Redis and
# Postgres and RabbitMQ (found or started by scripts/services.sh). Every test gets a fresh database
# (#[sqlx::test]) and its own Redis key namespace, so they run in parallel and leave nothing.
# The integration tests run twice: against one Redis, then against a local 3-master Redis
# Cluster (FLASHGATE_REDIS_CLUSTER=true; the test helpers pick the client). Last, small load-test
# runs over two gates (on one Redis and on the cluster) must pass their invariants verdict, and
# a short shortcut race over two gates must see every released unit sold again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
flashgate_services
flashgate_cluster
flashgate_rabbitmq_server

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (one Redis: $REDIS_URL)"
mkdir -p target
cargo test --workspace --locked 2>&1 | tee target/test-output.txt
echo "== cargo test --test api (Redis Cluster: $FLASHGATE_CLUSTER_URL)"
REDIS_URL=$FLASHGATE_CLUSTER_URL FLASHGATE_REDIS_CLUSTER=true cargo test --locked --test api 2>&1 | tee -a target/test-output.txt
count() { awk -v word="$1;" '/^test result:/ {for (i = 2; i <= NF; i++) if ($i == word) n += $(i - 1)} END {print n + 0}' target/test-output.txt; }
passed=$(count passed)
failed=$(count failed)
echo "== load-test smoke run: 2,000 buyers over two gates at a SKU with stock 100, then the invariants and events verdict"
rm -rf target/loadtest
FLASHGATE_PROFILE=debug FLASHGATE_LOADTEST_GATES=2 ./scripts/loadtest.sh --buyers 2000 --stock 100 --concurrency 200 --quiet --consume-events
# Its reports land under target/ by default, never in the checkout's root.
[ -s target/loadtest/report.html ] && [ -s target/loadtest/report.json ] || { echo "no load-test reports under target/loadtest" >&2; failed=$((failed + 1)); }
echo "== load-test smoke run on the Redis Cluster: 2,000 buyers over two gates, stock 100"
rm -rf target/loadtest-cluster
REDIS_URL=$FLASHGATE_CLUSTER_URL FLASHGATE_REDIS_CLUSTER=true FLASHGATE_PROFILE=debug FLASHGATE_LOADTEST_GATES=2 \
  ./scripts/loadtest.sh --buyers 2000 --stock 100 --concurrency 200 --quiet --consume-events \
  --report-json target/loadtest-cluster/report.json --report-html target/loadtest-cluster/report.html
echo "== shortcut race smoke run: two gates, release on one, reserve on the other at once"
FLASHGATE_PROFILE=debug ./scripts/shortcut-race.sh --rounds 20 --busy 4
checks=3

echo "== loadtest.sh refuses a port something else listens on (it used to drive that instead)"
coproc HOLDER { python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(120)'; }
read -r taken <&"${HOLDER[0]}"
set +e
FLASHGATE_PROFILE=debug FLASHGATE_LOADTEST_PORT=$taken ./scripts/loadtest.sh --buyers 10 --quiet 2>target/loadtest-taken.txt
status=$?
set -e
kill "$HOLDER_PID" 2>/dev/null || true
if [ "$status" -ne 2 ] || ! grep -q "is taken" target/loadtest-taken.txt; then
  echo "loadtest.sh on a taken port: exit $status" >&2; cat target/loadtest-taken.txt >&2; failed=$((failed + 1))
else
  checks=$((checks + 1))
fi

echo "== the operator's console in headless Chromium: sign in, numbers move, pause, resume"
if FLASHGATE_PROFILE=debug ./scripts/browser-test.sh; then checks=$((checks + 1)); else failed=$((failed + 1)); fi

echo "== schemathesis: requests generated from /openapi.json, every check"
if FLASHGATE_PROFILE=debug ./scripts/schemathesis.sh; then checks=$((checks + 1)); else failed=$((failed + 1)); fi

echo "== flashgate_delete_namespace deletes keys whose names hold quotes, spaces and backslashes"
ns="fgclean-$$-$RANDOM"
for key in plain "admin:NA0,'-x" 'a b"c' 'back\slash'; do
  redis-cli -u "$REDIS_URL" SET "$ns:$key" 1 >/dev/null
done
flashgate_delete_namespace "$ns"
left=$(redis-cli -u "$REDIS_URL" --scan --pattern "$ns:*")
if [ -n "$left" ]; then
  echo "left behind: $left" >&2; failed=$((failed + 1))
else
  checks=$((checks + 1))
fi

echo "== script-cost.sh: reserve.lua's own arguments still make holds (a short instruction count)"
if SCRIPT_COST_N=300 ./scripts/script-cost.sh; then checks=$((checks + 1)); else failed=$((failed + 1)); fi

echo "== docker compose files parse (when a compose client is installed)"
compose=()
if docker compose version >/dev/null 2>&1; then compose=(docker compose); elif command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose); fi
if [ ${#compose[@]} -gt 0 ]; then
  if "${compose[@]}" -f docker-compose.yml config -q && "${compose[@]}" -f docker-compose.yml -f docker-compose.stores.yml config -q; then
    checks=$((checks + 1))
  else
    failed=$((failed + 1))
  fi
else
  echo "(no docker compose client here: skipped)"
fi

echo "== alert rules: promtool check, promtool unit tests, and every metric they name exists"
command -v promtool >/dev/null 2>&1 || _fg_apt_install prometheus || true
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool is missing and could not be installed (apt-get install prometheus)" >&2; failed=$((failed + 1))
elif promtool check rules ops/prometheus/alerts.yml && (cd ops/prometheus && promtool test rules alerts.test.yml); then
  missing=$(grep -oE 'flashgate_[a-z_]+' ops/prometheus/alerts.yml | sed -E 's/_(bucket|count|sum)$//' | sort -u |
    while read -r metric; do grep -rqF "\"$metric\"" src || echo "$metric"; done)
  if [ -n "$missing" ]; then
    echo "alerts.yml names metrics the gate never records: $missing" >&2; failed=$((failed + 1))
  else
    checks=$((checks + 1))
  fi
else
  failed=$((failed + 1))
fi

echo "== Kubernetes manifests: API schemas (1.29, 1.37, strict) and how they fit together, offline"
if ./scripts/kubernetes-check.sh; then checks=$((checks + 1)); else failed=$((failed + 1)); fi

echo "== nothing in the repository points outside it"
if git grep -nE '\.\./(shared|\.library)' -- . ':!scripts/test.sh'; then
  failed=$((failed + 1))
else
  checks=$((checks + 1))
fi

# One closing line for the whole suite: every cargo test, plus each script check above as one.
echo "tests: $((passed + checks)) passed, $failed failed"
[ "$failed" -eq 0 ]
