#!/usr/bin/env bash
# Runs the gate with a demo sale, afresh every run: finds or starts Redis, Postgres and RabbitMQ, drops and
# recreates the demo's own database (flashgate_demo) and Redis namespace (demo), creates the sale
# `demo-sneaker` (100 units at 199.99 USD, 2 per buyer), pre-warms it, prints a copy-paste block
# (the settings every CLI command and the load test need, two buyer tokens, the load-test
# command), and serves on FLASHGATE_LISTEN (default 127.0.0.1:8080) until Ctrl-C.
#
# The demo gate trusts this machine as a proxy (FLASHGATE_TRUSTED_PROXIES=127.0.0.1) so that
# the load test can spread its buyers over many client addresses; do not copy that to a gate
# that faces the internet directly.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
flashgate_services

export DATABASE_URL="$FLASHGATE_PG_SERVER/flashgate_demo"
export FLASHGATE_REDIS_NAMESPACE=demo
export FLASHGATE_JWT_SECRET=${FLASHGATE_JWT_SECRET:-demo-secret-change-me-0123456789}
export FLASHGATE_ADMIN_TOKEN=${FLASHGATE_ADMIN_TOKEN:-demo-admin-token-change-me-0123456789}
export FLASHGATE_LISTEN=${FLASHGATE_LISTEN:-127.0.0.1:8080}
export FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32,::1/128
# Events go to RabbitMQ (found or started by services.sh) on an exchange of the demo's own.
export FLASHGATE_AMQP_EXCHANGE=${FLASHGATE_AMQP_EXCHANGE:-flashgate.demo.events}
host=${FLASHGATE_LISTEN%:*} port=${FLASHGATE_LISTEN##*:}
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
  echo "demo: something already listens on $FLASHGATE_LISTEN (an earlier demo?); stop it or set FLASHGATE_LISTEN" >&2
  exit 1
fi

cargo build --release --locked -p flashgate -p flashgate-loadtest
bin=$PWD/target/release
flashgate=$bin/flashgate

# Afresh: the demo's database and namespace only, never anything else on these servers.
if command -v psql >/dev/null 2>&1; then
  # No NOTICE "database does not exist, skipping" on a first run.
  PGOPTIONS='-c client_min_messages=warning' \
    psql "$FLASHGATE_PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS flashgate_demo WITH (FORCE)" >/dev/null
else
  echo "demo: no psql here, so the database flashgate_demo is reused (its sale is reset below)" >&2
fi
flashgate_delete_namespace demo ||
  echo "demo: no redis-cli here, so keys of the namespace demo may remain from an earlier run" >&2

"$flashgate" migrate
"$flashgate" sku upsert demo-sneaker --name "Demo sneaker" --price 199.99 --currency USD \
  --stock 100 --per-buyer-limit 2 --hold-ttl-seconds 300
"$flashgate" prewarm --sku demo-sneaker --force

token_ttl_seconds=3600
alice=$("$flashgate" token --buyer alice --ttl-seconds "$token_ttl_seconds")
bob=$("$flashgate" token --buyer bob --ttl-seconds "$token_ttl_seconds")
valid_until=$(date -d "+$token_ttl_seconds seconds" '+%H:%M' 2>/dev/null || echo "an hour from now")
cat <<MSG

flashgate is starting on http://$FLASHGATE_LISTEN with the sale "demo-sneaker" (Ctrl-C stops it).
Paste this into another shell, then follow "Five minutes with flashgate" in the README:

export PATH="$bin:\$PATH"
export DATABASE_URL="$DATABASE_URL"
export REDIS_URL="$REDIS_URL"
export FLASHGATE_REDIS_NAMESPACE=$FLASHGATE_REDIS_NAMESPACE
export FLASHGATE_JWT_SECRET="$FLASHGATE_JWT_SECRET"
export FLASHGATE_ADMIN_TOKEN="$FLASHGATE_ADMIN_TOKEN"
export FLASHGATE_URL="http://$FLASHGATE_LISTEN"
export FLASHGATE_AMQP_URL="$FLASHGATE_AMQP_URL"
export FLASHGATE_AMQP_EXCHANGE=$FLASHGATE_AMQP_EXCHANGE
export ALICE="$alice"
export BOB="$bob"

ALICE and BOB are buyer tokens valid until $valid_until (1 h); mint fresh ones with
flashgate token --buyer alice

The load test against this demo (its own sale, 2,000 buyers over 1,000 client addresses):

flashgate-loadtest --create --sku demo-load --stock 100 --buyers 2000 --clients 1000 \\
  --report-html target/demo-loadtest.html

MSG
exec "$flashgate" serve
