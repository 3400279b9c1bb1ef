#!/usr/bin/env bash
# Measures the sold-out shortcut's refusal window across two gates (flashgate-shortcut-race):
# starts two `flashgate serve` on one private database and Redis namespace, runs the race with
# FLASHGATE_SOLD_OUT_SHORTCUT=true, then again with it off, and prints both lines.
#
#   scripts/shortcut-race.sh [flashgate-shortcut-race options...]   e.g. --rounds 200 --busy 32
#
# FLASHGATE_PROFILE=release (default) or debug. FLASHGATE_GATE_BIN runs another build's
# `flashgate` as the gates (to compare with an older commit).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
flashgate_private_run race
# Every virtual buyer comes from this machine: per-client shedding and the admission queue would
# measure themselves, not the shortcut.
export FLASHGATE_CLIENT_RATE=0 FLASHGATE_BUYER_RATE=0 FLASHGATE_ADMISSION_LIMIT=100000
export FLASHGATE_REQUESTS_PER_CLIENT=0 FLASHGATE_REQUESTS_PER_BUYER=0

for shortcut in true false; do
  export FLASHGATE_SOLD_OUT_SHORTCUT=$shortcut
  a=$(flashgate_free_port); flashgate_start_gate "$a"
  b=$(flashgate_free_port); flashgate_start_gate "$b"
  echo -n "FLASHGATE_SOLD_OUT_SHORTCUT=$shortcut: "
  "$FLASHGATE_BIN_DIR/flashgate-shortcut-race" --url-a "http://127.0.0.1:$a" --url-b "http://127.0.0.1:$b" "$@"
  flashgate_stop_gates
done
