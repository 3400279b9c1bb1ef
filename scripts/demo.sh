#!/usr/bin/env bash
# Runs the gate with a demo sale: finds or starts Redis and Postgres, migrates, creates the sale
# `demo-sneaker` (100 units at 199.99 USD, 2 per buyer), pre-warms it, prints a buyer token and
# a curl line, and serves on FLASHGATE_LISTEN (default 127.0.0.1:8080) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
had_database_url=${DATABASE_URL:+yes}
flashgate_services
[ -n "$had_database_url" ] || export DATABASE_URL="$FLASHGATE_PG_SERVER/flashgate"

export FLASHGATE_JWT_SECRET=${FLASHGATE_JWT_SECRET:-demo-secret-change-me-0123456789}
export FLASHGATE_ADMIN_TOKEN=${FLASHGATE_ADMIN_TOKEN:-demo-admin-token-change-me-0123456789}
export FLASHGATE_LISTEN=${FLASHGATE_LISTEN:-127.0.0.1:8080}

cargo build --release --locked --bin flashgate
flashgate=target/release/flashgate
"$flashgate" migrate
"$flashgate" sku upsert demo-sneaker --name "Demo sneaker" --price 199.99 --currency USD \
  --stock 100 --per-buyer-limit 2 --hold-ttl-seconds 300
# --force: the demo starts its sale afresh every run (never do this to a live sale).
"$flashgate" prewarm --sku demo-sneaker --force

token=$("$flashgate" token --buyer demo-buyer)
cat <<MSG

flashgate is starting on http://$FLASHGATE_LISTEN with the sale "demo-sneaker". Try:

  curl -s http://$FLASHGATE_LISTEN/v1/skus/demo-sneaker
  curl -s -X POST http://$FLASHGATE_LISTEN/v1/skus/demo-sneaker/reservations \\
    -H 'Authorization: Bearer $token' \\
    -H 'Idempotency-Key: demo-1' -H 'Content-Type: application/json' -d '{"quantity": 1}'

Admin token: $FLASHGATE_ADMIN_TOKEN   (Ctrl-C stops the gate)

MSG
exec "$flashgate" serve
