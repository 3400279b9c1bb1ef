#!/usr/bin/env bash
# Measures what an idle catalogue costs: N pre-warmed sales with no traffic, G gates
# (`flashgate serve`) on a private database and Redis namespace, and the CPU each gate, the Redis
# server and Postgres (every server process) use over a window, read from /proc/<pid>/stat.
#
#   scripts/idle-cost.sh [--skus 10000] [--gates 1] [--seconds 20] [--warmup 5]
#
# FLASHGATE_PROFILE=release (default) or debug; FLASHGATE_GATE_BIN runs another build's
# `flashgate` as the gates (to compare builds). Redis and Postgres must run on this machine
# (their processes are read from /proc); on a cluster (FLASHGATE_REDIS_CLUSTER=true, REDIS_URL the
# seed nodes) each node named is read. Prints a summary line:
#   idle: skus=N gates=G seconds=S gate=A% (each: ...) redis=B% [per node] postgres=C%
set -euo pipefail
cd "$(dirname "$0")/.."
skus=10000 gates=1 seconds=20 warmup=5
while [ $# -gt 0 ]; do
  case $1 in
    --skus) skus=$2; shift 2 ;;
    --gates) gates=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    *) echo "usage: $0 [--skus N] [--gates G] [--seconds S] [--warmup S]" >&2; exit 2 ;;
  esac
done
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
flashgate_private_run idle
flashgate=$FLASHGATE_BIN_DIR/flashgate

echo "== $skus sales in Postgres, then prewarm --all" >&2
psql -q "$DATABASE_URL" <<SQL
INSERT INTO skus (sku, name, price, currency, per_buyer_limit, hold_ttl_seconds)
  SELECT 'idle-' || g, 'Idle sale ' || g, 10.00, 'USD', 2, 300 FROM generate_series(1, $skus) g;
INSERT INTO inventory (sku, total, available) SELECT sku, 100, 100 FROM skus;
INSERT INTO settlement_cursor (sku) SELECT sku FROM skus;
SQL
"$flashgate" prewarm --all >/dev/null

gate_pids=()
for _ in $(seq 1 "$gates"); do
  flashgate_start_gate "$(flashgate_free_port)"
  gate_pids+=("$FLASHGATE_GATE_PID")
done
# Every Redis server REDIS_URL names (each seed node of a cluster).
redis_pids=()
for url in ${REDIS_URL//,/ }; do
  redis_pids+=("$(redis-cli -u "$url" info server | awk -F: '/^process_id:/ {print $2+0}')")
done
sleep "$warmup"

# utime + stime in clock ticks of the named processes (those that still exist)
ticks() { local pid total=0; for pid in "$@"; do
  [ -r "/proc/$pid/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
done; echo "$total"; }
postgres_pids() { pgrep -x postgres 2>/dev/null || pgrep -f 'postgres:' || true; }

declare -A before
for pid in "${gate_pids[@]}" "${redis_pids[@]}" $(postgres_pids); do before[$pid]=$(ticks "$pid"); done
sleep "$seconds"
hz=$(getconf CLK_TCK)
percent() { awk -v t="$1" -v hz="$hz" -v s="$seconds" 'BEGIN {printf "%.2f", 100 * t / hz / s}'; }
delta() { echo $(( $(ticks "$1") - ${before[$1]} )); }
# Postgres: the processes alive at both ends, so one that exits mid-window does not skew it.
pg_sum=0
for pid in $(postgres_pids); do
  [ -n "${before[$pid]:-}" ] && pg_sum=$((pg_sum + $(delta "$pid")))
done
each=() gate_sum=0
for pid in "${gate_pids[@]}"; do
  d=$(delta "$pid")
  gate_sum=$((gate_sum + d))
  each+=("$(percent "$d")%")
done
redis_each=()
for pid in "${redis_pids[@]}"; do redis_each+=("$(percent "$(delta "$pid")")%"); done
echo "idle: skus=$skus gates=$gates seconds=$seconds gate=$(percent $((gate_sum / gates)))% (each: ${each[*]}) redis=${redis_each[*]} postgres=$(percent "$pg_sum")%"
