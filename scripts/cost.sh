#!/usr/bin/env bash
# What one request costs, in CPU rather than wall-clock time: wall-clock rates on a shared 2-core
# machine drift by ±30 % between runs, CPU time per request far less. For a fixed workload
# against a private gate (release build) it reports:
#   - gate CPU per request: user + system time of the `flashgate serve` process
#     (/proc/<pid>/stat) over the phase, divided by the requests answered;
#   - Redis CPU per request: `INFO cpu` (used_cpu_user + used_cpu_sys) over the phase, divided
#     likewise, and `INFO commandstats` µs per EVALSHA (the scripts' own time);
# for three phases: N new holds (every answer 201), N sold-out answers (409), and N commits
# (settle-bench: N reserves then N commits, the holds phase's cost per hold taken off).
# Each phase waits 2 s for the settler before it reads the counters, so the background
# settlement of its requests is counted in it (an idle gate's own timers add ~0.1 µs/request).
#
#   COST_N=20000 CONNECTIONS=64 scripts/cost.sh        FLASHGATE_GATE_BIN=... compares another build
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/private-gate.sh
flashgate_services
n=${COST_N:-20000}
connections=${CONNECTIONS:-64}
if ! command -v wrk >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "install wrk (apt-get install wrk)" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
fi
flashgate_private_run cost
# One buyer and one client drive the holds: no per-buyer or per-client caps, no hold quota.
export FLASHGATE_REQUESTS_PER_CLIENT=0 FLASHGATE_REQUESTS_PER_BUYER=0 FLASHGATE_BUYER_HOLD_QUOTA=0
export FLASHGATE_CLIENT_RATE=0 FLASHGATE_BUYER_RATE=0 FLASHGATE_TRUSTED_PROXIES=127.0.0.1/32,::1/128
bin=$FLASHGATE_BIN_DIR/flashgate
"$bin" sku upsert hot --name Hot --price 9.99 --stock 100000000 --per-buyer-limit 100000000 >/dev/null
"$bin" sku upsert gone --name Gone --price 9.99 --stock 0 --per-buyer-limit 5 >/dev/null
"$bin" prewarm --all >/dev/null
port=$(flashgate_free_port)
flashgate_start_gate "$port"
gate=$FLASHGATE_GATE_PID
base="http://127.0.0.1:$port"
export TOKEN=$("$bin" token --buyer cost)
ticks=$(getconf CLK_TCK)

gate_cpu_us() { # user + system time of the gate so far, µs
  awk -v t="$ticks" '{print ($14 + $15) * 1000000 / t}' "/proc/$gate/stat"
}
redis_cpu_us() {
  redis-cli -u "$REDIS_URL" INFO cpu | tr -d '\r' |
    awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.0f", s * 1000000}'
}
evalsha_stats() { # "calls usec"
  redis-cli -u "$REDIS_URL" INFO commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p'
}
settled() { # the settler applies a phase's decisions within a second or two: count them in it
  sleep 2
}

lua=$(mktemp)
phase_out=$(mktemp)
trap 'rm -f "$lua" "$phase_out"; _fg_private_cleanup' EXIT
cat >"$lua" <<'LUA'
-- Every request a new idempotency key; each thread stops after its share of COST_N answers.
local counter, answered, id = 0, 0, 0
local threads = {}
function setup(thread) id = id + 1; thread:set("tid", id); table.insert(threads, thread) end
function init(args) path = args[1]; share = tonumber(args[2]) end
request = function()
  counter = counter + 1
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
    ["Idempotency-Key"] = tid .. "-" .. counter, ["Content-Type"] = "application/json"}, '{"quantity":1}')
end
response = function(status)
  answered = answered + 1
  if answered >= share then wrk.thread:stop() end
end
LUA

# One phase: runs "$@" and prints "<requests> <gate µs/request> <redis µs/request> <µs/EVALSHA>",
# the requests being what wrk says it sent (a thread stops after its share, but the answers in
# flight then still count), else N.
measure() {
  local g0 r0 e0 g1 r1 e1 requests
  g0=$(gate_cpu_us); r0=$(redis_cpu_us); e0=$(evalsha_stats)
  "$@" >"$phase_out" 2>&1 || { cat "$phase_out" >&2; exit 1; }
  settled
  g1=$(gate_cpu_us); r1=$(redis_cpu_us); e1=$(evalsha_stats)
  requests=$(awk '/ requests in / {print $1}' "$phase_out")
  awk -v n="${requests:-$n}" -v g0="$g0" -v g1="$g1" -v r0="$r0" -v r1="$r1" -v e0="$e0" -v e1="$e1" 'BEGIN {
    split(e0, a, " "); split(e1, b, " ");
    calls = b[1] - a[1]; usec = b[2] - a[2];
    per = 0; if (calls > 0) per = usec / calls;
    printf "%d %.1f %.1f %.2f\n", n, (g1 - g0) / n, (r1 - r0) / n, per }'
}
wrk_n() { # path: N POSTs, each thread its half
  wrk -t2 -c"$connections" -d120s -s "$lua" "$base" -- "$1" $(( n / 2 ))
}

echo "== cost: $n requests per phase, $connections connections, gate pid $gate"
holds=$(measure wrk_n /v1/skus/hot/reservations)
if grep -q 'Non-2xx or 3xx responses' "$phase_out"; then
  echo "cost.sh: the holds phase was answered with errors, not holds" >&2; cat "$phase_out" >&2; exit 1
fi
sold_out=$(measure wrk_n /v1/skus/gone/reservations)
pairs=$(measure "$FLASHGATE_BIN_DIR/flashgate-settle-bench" --url "$base" --payers "$n" \
  --in-flight "$connections" --releases 0 --json)

read -r _ hold_gate hold_redis hold_eval <<<"$holds"
read -r _ sold_gate sold_redis sold_eval <<<"$sold_out"
read -r _ pair_gate pair_redis pair_eval <<<"$pairs"
commit_gate=$(awk -v p="$pair_gate" -v h="$hold_gate" 'BEGIN {printf "%.1f", p - h}')
commit_redis=$(awk -v p="$pair_redis" -v h="$hold_redis" 'BEGIN {printf "%.1f", p - h}')
printf '%-12s %16s %17s %14s\n' phase "gate CPU µs/req" "redis CPU µs/req" "µs/EVALSHA"
printf '%-12s %16s %17s %14s\n' hold "$hold_gate" "$hold_redis" "$hold_eval"
printf '%-12s %16s %17s %14s\n' sold_out "$sold_gate" "$sold_redis" "$sold_eval"
printf '%-12s %16s %17s %14s\n' commit "$commit_gate" "$commit_redis" "(pair $pair_eval)"
