#!/usr/bin/env bash
# Drives the operator's console (GET /console) in headless Chromium against a private gate while
# a small load run goes on: sign in, numbers move, pause (the API reports it paused), resume.
# Installs Debian's chromium and the npm package playwright-core (tests/browser) when missing.
# The screenshot is kept as target/console.png.
#
# FLASHGATE_PROFILE=release (default) or debug.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[browser] installing chromium" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[browser] chromium is missing: apt-get install chromium (as root)" >&2
    exit 1
  fi
fi
command -v node >/dev/null 2>&1 || { echo "[browser] node is missing: apt-get install nodejs npm" >&2; exit 1; }
(cd tests/browser && npm ci --no-audit --no-fund --silent)

flashgate_services
flashgate_private_run browser
export FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32,::1/128
port=$(flashgate_free_port)
flashgate_start_gate "$port"
url="http://127.0.0.1:$port"
sku=console-sale
mkdir -p target
started_flag=target/browser-load-started-$$
rm -f "$started_flag"

# The page signs in first; the load run starts a moment later and runs long enough (a slow
# arrival rate) for the numbers to be seen moving.
(
  sleep 4
  touch "$started_flag"
  "$FLASHGATE_BIN_DIR/flashgate-loadtest" --url "$url" --sku "$sku" --mode open --rate 150 \
    --buyers 1500 --clients 200 --quiet --report-json "" --report-html "" >target/browser-load.txt 2>&1 || true
) &
load=$!
trap 'kill $load 2>/dev/null || true; rm -f "$started_flag"; _fg_private_cleanup' EXIT

# The sale exists before the page opens.
curl -sf -X PUT "$url/v1/admin/skus/$sku" -H "Authorization: Bearer $FLASHGATE_ADMIN_TOKEN" \
  -H 'Content-Type: application/json' -d '{"name": "Console sale", "price": "19.99", "stock": 400}' >/dev/null
curl -sf -X POST "$url/v1/admin/skus/$sku/prewarm" -H "Authorization: Bearer $FLASHGATE_ADMIN_TOKEN" >/dev/null

FLASHGATE_URL=$url FLASHGATE_SKU=$sku FLASHGATE_SCREENSHOT=$PWD/target/console.png \
  FLASHGATE_LOAD_STARTED=$PWD/$started_flag node tests/browser/console.test.mjs
