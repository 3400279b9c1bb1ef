#!/usr/bin/env bash
# What one request costs, in CPU rather than wall-clock time: wall-clock rates on a shared 2-core
# machine drift by ±30 % between runs, CPU time per request far less. For a fixed workload
# against a private gate (release build) it reports:
#   - gate CPU per request: user + system time of the `flashgate serve` process
#     (/proc/<pid>/stat) over the phase, divided by the requests answered;
#   - Redis CPU per request: `INFO cpu` (used_cpu_user + used_cpu_sys) over the phase, divided
#     likewise, and `INFO commandstats` µs per EVALSHA (the scripts' own time);
#   - Postgres CPU per request: user + system time of every `postgres` process on this machine
#     (backends, and the postmaster's reaped children), i.e. the settlement of the phase's
#     decisions; other clusters on the machine count too, so keep them idle;
# for three phases: N new holds (every answer 201), N sold-out answers (409), and N commits
# (settle-bench: N reserves then N commits, the holds phase's cost per hold taken off).
# Each phase waits 2 s for the settler before it reads the counters, so the background
# settlement of its requests is counted in it; what the three spend idle (polls, timers), measured
# over 5 s before the first phase, is taken off each phase in proportion to its length.
#
# Then, where valgrind is installed, the steady figure: instructions per request, counted by
# `valgrind --tool=callgrind` in a gate started under it (the first one stopped, so one settler
# settles everything), for COST_CALLGRIND_N requests per phase, 8 in flight: instruction counts
# do not depend on what else the machine runs. The gate's idle timers are counted over an idle
# spell first and taken off each phase in proportion to its length.
#
#   COST_N=20000 CONNECTIONS=64 COST_CALLGRIND_N=1000 scripts/cost.sh
#   FLASHGATE_GATE_BIN=... compares another build; COST_CALLGRIND_N=0 skips the instruction counts;
#   COST_CALLGRIND_KEEP=DIR keeps the phases' dumps there (hold, sold_out, floor, pair) for callgrind_annotate
# The instruction counts also count the HTTP floor (FLASHGATE_FLOOR_ROUTE: the sold-out 409 behind
# every layer, without the handler), so the sold-out answer's cost over it is a steady figure too.
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
export FLASHGATE_FLOOR_ROUTE=true
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
postgres_cpu_us() { # every postgres process: its own time and its reaped children's
  local total=0 pid fields
  for pid in $(pgrep -x postgres || true); do
    fields=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + fields))
  done
  echo $((total * 1000000 / ticks))
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
done_dir=$(mktemp -d)
trap 'rm -rf "$lua" "$phase_out" "$done_dir"; _fg_private_cleanup' EXIT
cat >"$lua" <<'LUA'
-- Every request a new idempotency key; each thread stops after its share of COST_N answers and
-- says so in a file: wrk itself runs out its whole -d whatever its threads do (it sleeps that
-- long before it collects them), so the phase ends when both files are there (wrk_n).
local counter, answered, id = 0, 0, 0
function setup(thread) id = id + 1; thread:set("tid", id) end
function init(args) path = args[1]; share = tonumber(args[2]); done = args[3] end
request = function()
  counter = counter + 1
  return wrk.format("POST", path, {["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
    ["Idempotency-Key"] = tid .. "-" .. counter, ["Content-Type"] = "application/json"}, '{"quantity":1}')
end
response = function(status)
  answered = answered + 1
  if answered == share then
    io.open(done .. "." .. tid, "w"):close()
    wrk.thread:stop()
  end
end
LUA

# The gate's, Redis's and Postgres's CPU while nothing is asked of them (the settler's and the
# sweeper's polls, timers), µs per second: taken off each phase in proportion to its length.
idle_cpu() { # "<gate µs/s> <redis µs/s> <postgres µs/s>"
  local g0 r0 p0 t0 g1 r1 p1 t1
  g0=$(gate_cpu_us); r0=$(redis_cpu_us); p0=$(postgres_cpu_us); t0=$(date +%s.%N)
  sleep 5
  g1=$(gate_cpu_us); r1=$(redis_cpu_us); p1=$(postgres_cpu_us); t1=$(date +%s.%N)
  awk -v g="$((g1 - g0))" -v r="$((r1 - r0))" -v p="$((p1 - p0))" -v s="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" \
    'BEGIN {printf "%.0f %.0f %.0f\n", g / s, r / s, p / s}'
}

# One phase: runs "$@" and prints
# "<requests> <gate µs/request> <redis µs/request> <µs/EVALSHA> <postgres µs/request>", each
# net of the idle rates over the phase's length (settling included), the requests being what wrk
# says it answered (a thread stops after its share; the requests still in flight on its other
# connections then are served but not counted: at most CONNECTIONS of N), else N.
measure() {
  local g0 r0 e0 p0 t0 g1 r1 e1 p1 t1 requests
  g0=$(gate_cpu_us); r0=$(redis_cpu_us); e0=$(evalsha_stats); p0=$(postgres_cpu_us); t0=$(date +%s.%N)
  "$@" >"$phase_out" 2>&1 || { cat "$phase_out" >&2; exit 1; }
  settled
  g1=$(gate_cpu_us); r1=$(redis_cpu_us); e1=$(evalsha_stats); p1=$(postgres_cpu_us); t1=$(date +%s.%N)
  requests=$(awk '/ requests in / {print $1}' "$phase_out")
  awk -v n="${requests:-$n}" -v g0="$g0" -v g1="$g1" -v r0="$r0" -v r1="$r1" -v e0="$e0" -v e1="$e1" \
    -v p0="$p0" -v p1="$p1" -v t0="$t0" -v t1="$t1" -v idle="$idle" 'BEGIN {
    split(e0, a, " "); split(e1, b, " "); split(idle, i, " ");
    calls = b[1] - a[1]; usec = b[2] - a[2]; s = t1 - t0;
    per = 0; if (calls > 0) per = usec / calls;
    printf "%d %.1f %.1f %.2f %.1f\n", n, (g1 - g0 - i[1] * s) / n, (r1 - r0 - i[2] * s) / n, per,
      (p1 - p0 - i[3] * s) / n }'
}
wrk_n() { # path: N POSTs, each thread its half; ends when both threads have had their answers
  local wrk_pid threads=2
  rm -f "$done_dir"/done.*
  wrk -t"$threads" -c"$connections" -d120s -s "$lua" "$base" -- "$1" $(( n / threads )) "$done_dir/done" &
  wrk_pid=$!
  while kill -0 "$wrk_pid" 2>/dev/null && (( $(find "$done_dir" -name 'done.*' | wc -l) < threads )); do
    sleep 0.05
  done
  kill -INT "$wrk_pid" 2>/dev/null || true # ends its sleep: it prints what it measured and exits
  wait "$wrk_pid"
}

idle=$(idle_cpu)
echo "== cost: $n requests per phase, $connections connections, gate pid $gate"
echo "idle CPU taken off each phase, µs per second: gate, redis, postgres: $idle"
holds=$(measure wrk_n /v1/skus/hot/reservations)
if grep -q 'Non-2xx or 3xx responses' "$phase_out"; then
  echo "cost.sh: the holds phase was answered with errors, not holds" >&2; cat "$phase_out" >&2; exit 1
fi
sold_out=$(measure wrk_n /v1/skus/gone/reservations)
pairs=$(measure "$FLASHGATE_BIN_DIR/flashgate-settle-bench" --url "$base" --payers "$n" \
  --in-flight "$connections" --releases 0 --json)

read -r _ hold_gate hold_redis hold_eval hold_pg <<<"$holds"
read -r _ sold_gate sold_redis sold_eval sold_pg <<<"$sold_out"
read -r _ pair_gate pair_redis pair_eval pair_pg <<<"$pairs"
commit_gate=$(awk -v p="$pair_gate" -v h="$hold_gate" 'BEGIN {printf "%.1f", p - h}')
commit_redis=$(awk -v p="$pair_redis" -v h="$hold_redis" 'BEGIN {printf "%.1f", p - h}')
commit_pg=$(awk -v p="$pair_pg" -v h="$hold_pg" 'BEGIN {printf "%.1f", p - h}')
printf '%-12s %16s %17s %14s %20s\n' phase "gate CPU µs/req" "redis CPU µs/req" "µs/EVALSHA" "postgres CPU µs/req"
printf '%-12s %16s %17s %14s %20s\n' hold "$hold_gate" "$hold_redis" "$hold_eval" "$hold_pg"
printf '%-12s %16s %17s %14s %20s\n' sold_out "$sold_gate" "$sold_redis" "$sold_eval" "$sold_pg"
printf '%-12s %16s %17s %14s %20s\n' commit "$commit_gate" "$commit_redis" "(pair $pair_eval)" "$commit_pg"

# ---- Instructions per request (callgrind) ----
cg_n=${COST_CALLGRIND_N:-1000}
if [ "$cg_n" = 0 ]; then exit 0; fi
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
  echo "valgrind is not installed: no instruction counts (apt-get install valgrind)"
  exit 0
fi
flashgate_stop_gates
cg_dir=$(mktemp -d)
trap 'rm -rf "$lua" "$phase_out" "$cg_dir"; _fg_private_cleanup' EXIT
printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/out.%%p "%s" "$@"\n' \
  "$cg_dir" "${FLASHGATE_GATE_BIN:-$bin}" >"$cg_dir/gate"
chmod +x "$cg_dir/gate"
port=$(flashgate_free_port)
FLASHGATE_GATE_BIN=$cg_dir/gate flashgate_start_gate "$port"
cg_gate=$FLASHGATE_GATE_PID
base="http://127.0.0.1:$port"

# N POSTs of one path, `in_flight` connections each sending its share in turn (keep-alive), each
# request a new idempotency key (named after the run, so the warm-up's keys are never sent
# again); exits non-zero unless every answer has the expected status and none is a replay.
fixed_requests() { # run path count expected-status
  python3 - "$port" "$1" "$2" "$3" "$4" "$TOKEN" <<'PY'
import http.client, sys, threading
port, run, path, count, expected, token = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
in_flight, wrong, replayed = 8, [], []
def buyer(lane):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(lane, count, in_flight):
        conn.request("POST", path, body=b'{"quantity":1}', headers={
            "Authorization": "Bearer " + token, "Content-Type": "application/json",
            "Idempotency-Key": f"cg-{run}-{path}-{i}"})
        answer = conn.getresponse()
        answer.read()
        if answer.status != expected:
            wrong.append(answer.status)
        if answer.getheader("Idempotent-Replayed") is not None:
            replayed.append(i)
threads = [threading.Thread(target=buyer, args=(lane,)) for lane in range(in_flight)]
for t in threads: t.start()
for t in threads: t.join()
if wrong:
    sys.exit(f"{len(wrong)} of {count} answers were not {expected}: {sorted(set(wrong))}")
if replayed:
    sys.exit(f"{len(replayed)} of {count} answers were replays of an earlier request, not new holds")
PY
}
newest_total() { # the instruction total of the newest callgrind dump
  awk '/^totals:/ {print $2}' "$(ls -t "$cg_dir"/out.* | head -1)"
}
# One counted spell: zero the counters, run "$@", let the settler finish, dump; prints
# "<instructions> <seconds>".
counted() {
  local t0 t1
  callgrind_control --zero "$cg_gate" >/dev/null 2>&1
  t0=$(date +%s.%N)
  "$@" >"$phase_out" 2>&1 || { cat "$phase_out" >&2; exit 1; }
  sleep 3
  t1=$(date +%s.%N)
  callgrind_control --dump "$cg_gate" >/dev/null 2>&1
  if [ -n "${COST_CALLGRIND_KEEP:-}" ] && [ -n "${cg_phase:-}" ]; then
    mkdir -p "$COST_CALLGRIND_KEEP" && cp "$(ls -t "$cg_dir"/out.* | head -1)" "$COST_CALLGRIND_KEEP/$cg_phase.callgrind"
  fi
  echo "$(newest_total) $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
}
# Warm up (connections, scripts, caches) with what the phases do, uncounted.
fixed_requests warm /v1/skus/hot/reservations 200 201 >/dev/null
fixed_requests warm /v1/skus/gone/reservations 200 409 >/dev/null
fixed_requests warm /v1/skus/gone/floor 200 409 >/dev/null
read -r idle_ir idle_s < <(counted sleep 5)
per_request() { # "<instructions> <seconds>" requests: net of the idle timers
  awk -v ir="${1% *}" -v s="${1#* }" -v n="$2" -v idle="$idle_ir" -v idle_s="$idle_s" \
    'BEGIN {printf "%.0f", (ir - idle / idle_s * s) / n}'
}
# Each spell is assigned before it is divided: a phase that fails (wrong answers) then stops the
# script, where a failure inside per_request's argument went unnoticed and printed 0.
cg_phase=hold
spell=$(counted fixed_requests counted /v1/skus/hot/reservations "$cg_n" 201)
cg_hold=$(per_request "$spell" "$cg_n")
cg_phase=sold_out
spell=$(counted fixed_requests counted /v1/skus/gone/reservations "$cg_n" 409)
cg_sold=$(per_request "$spell" "$cg_n")
cg_phase=floor
spell=$(counted fixed_requests counted /v1/skus/gone/floor "$cg_n" 409)
cg_floor=$(per_request "$spell" "$cg_n")
cg_phase=pair
spell=$(counted "$FLASHGATE_BIN_DIR/flashgate-settle-bench" --url "$base" --payers "$cg_n" \
  --in-flight 8 --releases 0 --json)
cg_pair=$(per_request "$spell" "$cg_n")
echo
echo "== instructions per request (callgrind, $cg_n per phase, 8 in flight; idle timers $(awk -v i="$idle_ir" -v s="$idle_s" 'BEGIN {printf "%.1f", i / s / 1e6}') M/s taken off)"
printf '%-12s %16s\n' phase "instructions/req"
printf '%-12s %16s\n' hold "$cg_hold"
printf '%-12s %16s\n' sold_out "$cg_sold"
printf '%-12s %16s\n' floor "$cg_floor"
printf '%-12s %16s\n' commit "$((cg_pair - cg_hold))"
echo "sold-out answer / floor: $(awk -v s="$cg_sold" -v f="$cg_floor" 'BEGIN {printf "%.3f", s / f}')x"
