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
# FLASHGATE_PROFILE=release (default) or debug; FLASHGATE_LOADTEST_PORT (default: a free port);
# FLASHGATE_LOADTEST_GATES=N starts N gates on the same stores (default 1): buyers are spread
# over them, a double submit and a payment cross gates.
# Reports: target/loadtest/report.{json,html} unless --report-json/--report-html say otherwise.
# The exit code is flashgate-loadtest's: 0 when the verdict passed; 2 when the gate did not start.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
flashgate_private_run loadtest

port=${FLASHGATE_LOADTEST_PORT:-$(flashgate_free_port)}
export FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32,::1/128 FLASHGATE_BUYER_RATE=0
flashgate_start_gate "$port"
first_gate=$FLASHGATE_GATE_PID
urls=(--url "http://127.0.0.1:$port")
for _ in $(seq 2 "${FLASHGATE_LOADTEST_GATES:-1}"); do
  another=$(flashgate_free_port)
  flashgate_start_gate "$another"
  urls+=(--url "http://127.0.0.1:$another")
done

clients=()
[[ " $* " == *" --clients"* ]] || clients=(--clients "${FLASHGATE_LOADTEST_CLIENTS:-1000}")
"$FLASHGATE_BIN_DIR/flashgate-loadtest" "${urls[@]}" --create \
  --server-pid "$first_gate" "${clients[@]}" "$@"
