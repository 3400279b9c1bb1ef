#!/usr/bin/env bash
# Measures the sold-out shortcut's refusal window across two gates (flashgate-shortcut-race):
# starts two `flashgate serve` on one private database and Redis namespace, runs the race with
# FLASHGATE_SOLD_OUT_SHORTCUT=true, then again with it off, and prints both lines.
#
#   scripts/shortcut-race.sh [flashgate-shortcut-race options...]   e.g. --rounds 200 --busy 32
#
# FLASHGATE_PROFILE=release (default) or debug. FLASHGATE_GATE_BIN runs another build's `flashgate` as the gates (to compare with an older
# commit); migrations and the race itself come from this checkout.
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

run_id="race_$$_$RANDOM"
export DATABASE_URL="$FLASHGATE_PG_SERVER/flashgate_$run_id"
export FLASHGATE_REDIS_NAMESPACE="race-$run_id"
export FLASHGATE_JWT_SECRET="race-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export FLASHGATE_ADMIN_TOKEN="admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# Every virtual buyer comes from this machine: per-client shedding and the admission queue would
# measure themselves, not the shortcut.
export FLASHGATE_CLIENT_RATE=0 FLASHGATE_BUYER_RATE=0 FLASHGATE_ADMISSION_LIMIT=100000
export RUST_LOG=${RUST_LOG:-warn}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$bin/flashgate" migrate >/dev/null
gates=()
cleanup() {
  for pid in "${gates[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -u "$REDIS_URL" --scan --pattern "$FLASHGATE_REDIS_NAMESPACE:*" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
  fi
  if command -v psql >/dev/null 2>&1; then
    psql "$FLASHGATE_PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS flashgate_$run_id WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -f target/shortcut-race-"$run_id"-*.log
}
trap cleanup EXIT

start_gate() { # shortcut port
  FLASHGATE_SOLD_OUT_SHORTCUT=$1 FLASHGATE_LISTEN="127.0.0.1:$2" \
    "${FLASHGATE_GATE_BIN:-$bin/flashgate}" serve 2>"target/shortcut-race-$run_id-$2.log" &
  gates+=($!)
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return; fi
    kill -0 "${gates[-1]}" 2>/dev/null || { cat "target/shortcut-race-$run_id-$2.log" >&2; exit 2; }
    sleep 0.1
  done
  echo "gate on port $2 did not start" >&2; exit 2
}

for shortcut in true false; do
  a=$(free_port); start_gate "$shortcut" "$a"
  b=$(free_port); start_gate "$shortcut" "$b"
  echo -n "FLASHGATE_SOLD_OUT_SHORTCUT=$shortcut: "
  "$bin/flashgate-shortcut-race" --url-a "http://127.0.0.1:$a" --url-b "http://127.0.0.1:$b" "$@"
  for pid in "${gates[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  gates=()
done
