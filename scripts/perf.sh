#!/usr/bin/env bash
# Measures end-to-end HTTP reserve throughput on one SKU against its single-shard ceiling, in one
# run on one machine:
#   1. wrk: POST /v1/skus/hot/reservations, every request a new hold (stock never runs out);
#   2. wrk: the same on a sold-out SKU (every answer 409 sold_out);
#   3. redis-benchmark: EVALSHA of the same lua/reserve.lua with the same keys and arguments the
#      gate sends, every call a new hold, at the same concurrency;
#   4. wrk: POST /v1/skus/line/queue, a place in a sale's waiting room (one buyer token, so every
#      answer is its one place again: take_place.lua runs in full but for the INCR);
#   5. wrk: POST /v1/skus/gone/floor (FLASHGATE_FLOOR_ROUTE), the same 409 a sold-out reserve
#      answers, behind the same layers, without the handler: the HTTP floor;
#   6. redis-benchmark: scripts/minimal-reserve.lua (check stock, decrement, record the hold, append
#      the event), the floor reserve.lua's cost is held to.
# and prints the ratios. Uses a private gate (release build) like scripts/loadtest.sh;
# FLASHGATE_GATE_BIN runs another build's `flashgate` as the gate (to compare builds), and
# PERF_LUA_DIR the same build's scripts under redis-benchmark (the gate carries its own).
#   CONNECTIONS=64 DURATION=10 scripts/perf.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/reserve-call.sh
flashgate_services
connections=${CONNECTIONS:-64}
duration=${DURATION:-10}
for tool in wrk redis-benchmark; do
  if ! command -v "$tool" >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "install $tool (apt-get install wrk redis-tools)" >&2; exit 2; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-tools >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-tools >/dev/null; }
  fi
done
cargo build --release --locked -p flashgate

run_id="perf_$$_$RANDOM"
ns="perf-$run_id"
export DATABASE_URL="$FLASHGATE_PG_SERVER/flashgate_$run_id" FLASHGATE_REDIS_NAMESPACE="$ns"
export FLASHGATE_JWT_SECRET="perf-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" FLASHGATE_ADMIN_TOKEN="perf-admin-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export FLASHGATE_LISTEN="127.0.0.1:${FLASHGATE_PERF_PORT:-18081}" FLASHGATE_CLIENT_RATE=0 FLASHGATE_BUYER_RATE=0 RUST_LOG=warn
# One client and one buyer token drive the whole run: no in-flight caps per client or buyer.
# One buyer takes every hold, so the per-buyer hold quota (100 an hour by default) is off too:
# with it on, every request after the 100th was a 429, not a hold.
export FLASHGATE_REQUESTS_PER_CLIENT=0 FLASHGATE_REQUESTS_PER_BUYER=0 FLASHGATE_BUYER_HOLD_QUOTA=0
export FLASHGATE_FLOOR_ROUTE=true
bin=target/release/flashgate
"$bin" migrate >/dev/null
"$bin" sku upsert hot --name Hot --price 9.99 --stock 100000000 --per-buyer-limit 100000000 >/dev/null
"$bin" sku upsert gone --name Gone --price 9.99 --stock 0 --per-buyer-limit 5 >/dev/null
"$bin" sku upsert line --name Line --price 9.99 --stock 100000000 --waiting-room true >/dev/null
"$bin" prewarm --all >/dev/null
"${FLASHGATE_GATE_BIN:-$bin}" serve & server=$!
cleanup() {
  kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  flashgate_delete_namespace "$ns" || true
  psql "$FLASHGATE_PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS flashgate_$run_id WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
sleep 1
export TOKEN=$("$bin" token --buyer perf)
lua=$(mktemp)
cat >"$lua" <<'LUA'
local counter, id = 0, 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) path = args[1] end
request = function()
  counter = counter + 1
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
    ["Idempotency-Key"] = tid .. "-" .. counter, ["Content-Type"] = "application/json"}, '{"quantity":1}')
end
LUA
rps() { awk '/Requests\/sec/ {print $2}'; }
echo "== wrk -t2 -c$connections -d${duration}s: new holds"
out=$(wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$lua" "http://$FLASHGATE_LISTEN" -- /v1/skus/hot/reservations)
echo "$out"
holds=$(rps <<<"$out")
# wrk counts refusals as requests: a hold run whose answers were not 201s measured something else.
if grep -q 'Non-2xx or 3xx responses' <<<"$out"; then
  echo "perf.sh: the new-holds run was answered with errors, not holds (see above)" >&2
  exit 1
fi
echo "== wrk -t2 -c$connections -d${duration}s: sold out"
out=$(wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$lua" "http://$FLASHGATE_LISTEN" -- /v1/skus/gone/reservations)
echo "$out"
sold_out=$(rps <<<"$out")

lua_dir=${PERF_LUA_DIR:-lua}
echo "== redis-benchmark -c$connections: EVALSHA $lua_dir/reserve.lua, every call a new hold"
# The gate sends reserve.lua behind the files it is put after: the same text here, and the
# arguments the gate sends in this run (no rate limit, no hold quota, no client caps).
sha=$(redis-cli -u "$REDIS_URL" SCRIPT LOAD "$(flashgate_reserve_script "$lua_dir")")
hp=$(_fg_host_port "$REDIS_URL" 6379)
# A SKU of its own, loaded like `hot`: the gate's settler never reads its synthetic stream.
k="$ns:{ceiling}"
redis-cli -u "$REDIS_URL" HSET "$k:meta" state open starts_ms 0 ends_ms 0 limit 100000000 ttl_s 300 \
  price 9.99 currency USD name Ceiling num 0 >/dev/null
flashgate_pack_sale "$lua_dir" "$k:meta" -u "$REDIS_URL"
redis-cli -u "$REDIS_URL" SET "$k:stock" 100000000 >/dev/null
requests=$(( ${duration} * 30000 ))
flashgate_reserve_call "$k" ceiling
ceiling=$(redis-benchmark -h "${hp% *}" -p "${hp#* }" -c "$connections" -n "$requests" -r 1000000000 -q \
  EVALSHA "$sha" "${#RESERVE_KEYS[@]}" "${RESERVE_KEYS[@]}" "${RESERVE_ARGS[@]}" \
  | tr '\r' '\n' | awk '/requests per second/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) v = $i} END {print v}')
echo "$ceiling EVALSHA/s"
# redis-benchmark counts an error reply as a request: make sure the calls made holds.
decided=$(redis-cli -u "$REDIS_URL" XLEN "$k:events")
if (( decided < requests / 2 )); then
  echo "perf.sh: only $decided of $requests EVALSHA calls made a hold: the arguments no longer match $lua_dir/reserve.lua" >&2
  exit 1
fi
echo "== wrk -t2 -c$connections -d${duration}s: a place in a waiting room"
out=$(wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$lua" "http://$FLASHGATE_LISTEN" -- /v1/skus/line/queue)
echo "$out"
places=$(rps <<<"$out")
if grep -q 'Non-2xx or 3xx responses' <<<"$out"; then
  echo "perf.sh: the places run was answered with errors, not places (see above)" >&2
  exit 1
fi
echo "== wrk -t2 -c$connections -d${duration}s: the floor (a static sold-out 409)"
out=$(wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$lua" "http://$FLASHGATE_LISTEN" -- /v1/skus/gone/floor)
echo "$out"
floor=$(rps <<<"$out")

echo "== redis-benchmark -c$connections: EVALSHA of a minimal reserve script, every call a new hold"
minimal_sha=$(redis-cli -u "$REDIS_URL" SCRIPT LOAD "$(cat scripts/minimal-reserve.lua)")
m="$ns:{minimal}"
redis-cli -u "$REDIS_URL" SET "$m:stock" 100000000 >/dev/null
minimal=$(redis-benchmark -h "${hp% *}" -p "${hp#* }" -c "$connections" -n "$requests" -r 1000000000 -q \
  EVALSHA "$minimal_sha" 3 "$m:stock" "$m:hold:h__rand_int__" "$m:events" h__rand_int__ b__rand_int__ \
  | tr '\r' '\n' | awk '/requests per second/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) v = $i} END {print v}')
echo "$minimal EVALSHA/s"
if (( $(redis-cli -u "$REDIS_URL" XLEN "$m:events") < requests / 2 )); then
  echo "perf.sh: the minimal script made no holds" >&2
  exit 1
fi

echo
printf 'HTTP new holds/s:        %10.0f\n' "$holds"
printf 'HTTP places/s:           %10.0f\n' "$places"
printf 'HTTP sold-out answers/s: %10.0f\n' "$sold_out"
printf 'HTTP floor (static 409)/s:%9.0f\n' "$floor"
printf 'redis-benchmark reserve: %10.0f\n' "$ceiling"
printf 'redis-benchmark minimal: %10.0f\n' "$minimal"
awk -v h="$holds" -v c="$ceiling" -v s="$sold_out" 'BEGIN {
  printf "HTTP holds / single-shard ceiling: %.1f%%\n", 100 * h / c;
  printf "sold-out answers / holds: %.2fx\n", s / h }'
awk -v h="$holds" -v p="$places" 'BEGIN { printf "places / holds: %.2fx\n", p / h }'
awk -v s="$sold_out" -v f="$floor" -v c="$ceiling" -v m="$minimal" 'BEGIN {
  printf "sold-out answer cost / floor: %.2fx\n", f / s;
  printf "reserve.lua cost / minimal script: %.2fx\n", m / c }'
