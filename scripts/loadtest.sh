#!/usr/bin/env bash
# Runs a load test end to end against a private gate: finds or starts Redis and Postgres, starts
# `flashgate serve` on its own port, database and Redis namespace (with random secrets, and this
# machine trusted as a proxy so that the virtual buyers can come from many client addresses
# through X-Forwarded-For, as behind a load balancer), runs flashgate-loadtest against it with
# --create, then stops the gate and cleans up. Per-client shedding and admission keep their
# defaults; buyers are spread over $FLASHGATE_LOADTEST_CLIENTS addresses (default 1000) unless
# --clients is given.
#
#   scripts/loadtest.sh [flashgate-loadtest options...]      e.g. --buyers 5000 --stock 100
#
# FLASHGATE_PROFILE=release (default) or debug; FLASHGATE_LOADTEST_PORT (default: a free port).
# Reports: target/loadtest/report.{json,html} unless --report-json/--report-html say otherwise.
# The exit code is flashgate-loadtest's: 0 when the verdict passed; 2 when the gate did not start.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
flashgate_services

profile=${FLASHGATE_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --locked -p flashgate -p flashgate-loadtest
else
  cargo build --locked -p flashgate -p flashgate-loadtest
fi
bin=target/$profile

run_id="lt_$$_$RANDOM"
export DATABASE_URL="$FLASHGATE_PG_SERVER/flashgate_$run_id"
export FLASHGATE_REDIS_NAMESPACE="loadtest-$run_id"
export FLASHGATE_JWT_SECRET="loadtest-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export FLASHGATE_ADMIN_TOKEN="admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
port=${FLASHGATE_LOADTEST_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "loadtest.sh: port $port is taken; set FLASHGATE_LOADTEST_PORT to a free one" >&2
  exit 2
fi
export FLASHGATE_LISTEN="127.0.0.1:$port"
export FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32,::1/128 FLASHGATE_BUYER_RATE=0
export RUST_LOG=${RUST_LOG:-warn}

"$bin/flashgate" migrate >/dev/null
"$bin/flashgate" serve 2>"target/loadtest-server-$run_id.log" &
server=$!
cleanup() {
  kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -u "$REDIS_URL" --scan --pattern "$FLASHGATE_REDIS_NAMESPACE:*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
  fi
  if command -v psql >/dev/null 2>&1; then
    psql "$FLASHGATE_PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS flashgate_$run_id WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -f "target/loadtest-server-$run_id.log"
}
trap cleanup EXIT

# Wait for this gate (not anything else on the port): its own /healthz, while it still runs.
started=
for _ in $(seq 1 200); do
  kill -0 "$server" 2>/dev/null || break
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && kill -0 "$server" 2>/dev/null; then
    started=yes
    break
  fi
  sleep 0.1
done
if [ -z "$started" ]; then
  echo "loadtest.sh: the gate did not start:" >&2
  cat "target/loadtest-server-$run_id.log" >&2
  exit 2
fi

clients=()
[[ " $* " == *" --clients"* ]] || clients=(--clients "${FLASHGATE_LOADTEST_CLIENTS:-1000}")
"$bin/flashgate-loadtest" --url "http://$FLASHGATE_LISTEN" --create --server-pid "$server" "${clients[@]}" "$@"
