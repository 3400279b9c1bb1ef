#!/usr/bin/env bash
# Runs flashgate-settle-bench (commits per second on one SKU, and release -> "settled": true
# latency) against private gates: finds or starts Redis and Postgres, starts `flashgate serve`
# on its own port, database and Redis namespace (this machine trusted as a proxy, buyer rate
# limit off), runs the bench, then stops the gates and cleans up.
#
#   scripts/settle-bench.sh [flashgate-settle-bench options...]   e.g. --payers 2000 --in-flight 200
#
# FLASHGATE_PROFILE=release (default) or debug; FLASHGATE_BENCH_GATES=N starts N gates on the
# same stores (default 1); FLASHGATE_GATE_BIN runs another build's `flashgate` as the gates.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
flashgate_private_run settlebench

export FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32,::1/128 FLASHGATE_BUYER_RATE=0
urls=()
for _ in $(seq 1 "${FLASHGATE_BENCH_GATES:-1}"); do
  port=$(flashgate_free_port)
  flashgate_start_gate "$port"
  urls+=(--url "http://127.0.0.1:$port")
done
"$FLASHGATE_BIN_DIR/flashgate-settle-bench" "${urls[@]}" "$@"
