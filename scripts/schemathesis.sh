#!/usr/bin/env bash
# Schemathesis against a private gate: generates requests from the gate's own /openapi.json and
# runs every check — no server error, every answer as the document describes it, schema-valid
# requests accepted and invalid ones refused, auth enforced — with the exceptions and their
# reasons in scripts/schemathesis.toml (hooks: scripts/schemathesis_hooks.py). Installs
# schemathesis into a private venv (target/schemathesis-venv) the first time.
#
#   scripts/schemathesis.sh [st run options...]       e.g. --max-examples 50
#
# FLASHGATE_PROFILE=release (default) or debug.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
source scripts/python-venv.sh

venv=target/schemathesis-venv
flashgate_venv "$venv" "schemathesis==4.32.5" st

flashgate_services
flashgate_private_run schemathesis
port=$(flashgate_free_port)
flashgate_start_gate "$port"
url="http://127.0.0.1:$port"
# A live sale, so that generated requests reach past "unknown SKU" now and then.
curl -sf -X PUT "$url/v1/admin/skus/sneaker" -H "Authorization: Bearer $FLASHGATE_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name": "Sneaker", "price": "19.99", "stock": 1000}' >/dev/null
curl -sf -X POST "$url/v1/admin/skus/sneaker/prewarm" -H "Authorization: Bearer $FLASHGATE_ADMIN_TOKEN" >/dev/null

# Each operation gets the credential its security scheme names (scripts/schemathesis.toml): the
# buyer's token for reserving, the admin token for the admin API; the checks that leave the
# credential out or spoil it know which one that is.
FLASHGATE_SCHEMATHESIS_BUYER_TOKEN=$("$FLASHGATE_BIN_DIR/flashgate" token --buyer schemathesis)
export FLASHGATE_SCHEMATHESIS_BUYER_TOKEN FLASHGATE_ADMIN_TOKEN
echo "== every operation, every check"
SCHEMATHESIS_HOOKS=scripts/schemathesis_hooks.py \
  "$venv/bin/st" --config-file scripts/schemathesis.toml run "$url/openapi.json" \
  --max-examples "${FLASHGATE_SCHEMATHESIS_EXAMPLES:-25}" \
  --seed 1 --no-color "$@"
