#!/usr/bin/env bash
# Schemathesis against a private gate: generates requests from the gate's own /openapi.json and
# fails on any server error (5xx) or any answer the document does not describe. Installs
# schemathesis into a private venv (target/schemathesis-venv) the first time.
#
#   scripts/schemathesis.sh [st run options...]       e.g. --max-examples 50
#
# FLASHGATE_PROFILE=release (default) or debug.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh

venv=target/schemathesis-venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

flashgate_services
flashgate_private_run schemathesis
port=$(flashgate_free_port)
flashgate_start_gate "$port"
url="http://127.0.0.1:$port"
# A live sale, so that generated requests reach past "unknown SKU" now and then.
curl -sf -X PUT "$url/v1/admin/skus/sneaker" -H "Authorization: Bearer $FLASHGATE_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name": "Sneaker", "price": "19.99", "stock": 1000}' >/dev/null
curl -sf -X POST "$url/v1/admin/skus/sneaker/prewarm" -H "Authorization: Bearer $FLASHGATE_ADMIN_TOKEN" >/dev/null

run() { # token, then st options
  local token=$1; shift
  "$venv/bin/st" run "$url/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${FLASHGATE_SCHEMATHESIS_EXAMPLES:-25}" \
    --header "Authorization: Bearer $token" \
    --seed 1 --no-color "$@"
}
echo "== every operation, as the admin"
run "$FLASHGATE_ADMIN_TOKEN" "$@"
echo "== the buyers' operations, as a buyer"
run "$("$FLASHGATE_BIN_DIR/flashgate" token --buyer schemathesis)" --include-tag buyers "$@"
