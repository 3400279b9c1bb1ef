#!/usr/bin/env bash
# What one decision costs Redis, in instructions: a private redis-server runs under
# `valgrind --tool=callgrind`, and each script is called SCRIPT_COST_N times (redis-benchmark,
# 4 in flight, every call a new key); the figure is the instructions Redis spent reading and
# running those calls (`readQueryFromClient`, inclusive) divided by the calls. Instruction
# counts do not depend on what else the machine runs, where `INFO commandstats` µs per call move
# by ±30 % between runs here. It reports:
#   - an empty script sent reserve.lua's keys and arguments (what any call with those costs
#     before its first command);
#   - scripts/minimal-reserve.lua (read the stock, decrement it, write a 3-field hold hash,
#     append a 6-field event, as perf.sh runs it), with its own 3 keys and 2 arguments, and sent
#     as many keys and arguments as reserve.lua;
#   - scripts/contract-reserve.lua (the minimal script plus what the contract needs of every
#     decision: the idempotency record, TIME, the sale's fields, the buyer's count, the expiry
#     set), sent reserve.lua's keys and arguments;
#   - reserve.lua deciding a new hold, and a sold-out refusal, with the arguments perf.sh's
#     ceiling sends (flashgate_reserve_call: rate limit, hold quota and client caps off, as in
#     the perf runs);
# SCRIPT_COST_LUA_DIR measures another tree's scripts (`git worktree add` a base), to compare.
#   SCRIPT_COST_N=5000 scripts/script-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
source scripts/reserve-call.sh
source scripts/private-gate.sh
n=${SCRIPT_COST_N:-5000}
lua=${SCRIPT_COST_LUA_DIR:-lua}
for tool in redis-server redis-benchmark valgrind callgrind_control; do
  if ! command -v "$tool" >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "install $tool (apt-get install redis-server redis-tools valgrind)" >&2; exit 2; }
    _fg_apt_install redis-server redis-tools valgrind
  fi
done
work=$(mktemp -d)
port=$(flashgate_free_port)
valgrind --tool=callgrind --callgrind-out-file="$work/out.%p" \
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
redis=$!
trap 'kill "$redis" 2>/dev/null; wait "$redis" 2>/dev/null; rm -rf "$work"' EXIT
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 100); do cli PING >/dev/null 2>&1 && break; sleep 0.2; done
cli PING >/dev/null || { cat "$work/redis.log" >&2; exit 1; }

k='{c}'
flashgate_reserve_call "$k" cost
reserve_keys=("${RESERVE_KEYS[@]}")
reserve_args=("${RESERVE_ARGS[@]}")
minimal=$(cat scripts/minimal-reserve.lua)
contract=$(cat scripts/contract-reserve.lua)
# The minimal script's own keys, then the rest of reserve.lua's, so that it is sent as many.
minimal_keys=("$k:stock" "$k:hold:h__rand_int__" "$k:events")
for key in "${reserve_keys[@]}"; do
  case $key in "$k:stock" | "$k:hold:"* | "$k:events") ;; *) minimal_keys+=("$key") ;; esac
done

# A fresh sale: open, no end, stock for every call.
fresh_sale() { # stock
  cli FLUSHALL >/dev/null
  cli HSET "$k:meta" state open starts_ms 0 ends_ms 0 limit 100000000 ttl_s 300 price 9.99 \
    currency USD name Cost num 0 >/dev/null
  flashgate_pack_sale "$lua" "$k:meta" -p "$port"
  cli SET "$k:stock" "$1" >/dev/null
}
load() { cli SCRIPT LOAD "$1"; }
calls() { # count EVALSHA arguments...
  local count=$1
  shift
  redis-benchmark -p "$port" -c 4 -n "$count" -r 1000000000 -q EVALSHA "$@" >/dev/null 2>&1
}
# Instructions per call of "$@" (calls' arguments), net of nothing: the warm-up is not counted.
counted() {
  calls 200 "$@"
  callgrind_control --zero "$redis" >/dev/null 2>&1
  calls "$n" "$@"
  callgrind_control --dump "$redis" >/dev/null 2>&1
  local dump
  dump=$(ls -t "$work"/out.* | head -1)
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null |
    awk -v n="$n" '/readQueryFromClient/ {gsub(",", "", $1); printf "%.0f", $1 / n; exit}'
  rm -f "$work"/out.*.*
}
reserve_script=$(flashgate_reserve_script "$lua")

fresh_sale 100000000
empty=$(counted "$(load 'return 1')" "${#reserve_keys[@]}" "${reserve_keys[@]}" "${reserve_args[@]}")
fresh_sale 100000000
minimal_own=$(counted "$(load "$minimal")" 3 "$k:stock" "$k:hold:h__rand_int__" "$k:events" h__rand_int__ b__rand_int__)
fresh_sale 100000000
minimal_wide=$(counted "$(load "$minimal")" "${#minimal_keys[@]}" "${minimal_keys[@]}" "${reserve_args[@]}")
fresh_sale 100000000
contract_hold=$(counted "$(load "$contract")" "${#reserve_keys[@]}" "${reserve_keys[@]}" "${reserve_args[@]}")
if (( $(cli XLEN "$k:events") < n )); then
  echo "script-cost.sh: scripts/contract-reserve.lua made fewer than $n holds: its arguments no longer match reserve.lua's" >&2
  exit 1
fi
fresh_sale 100000000
hold=$(counted "$(load "$reserve_script")" "${#reserve_keys[@]}" "${reserve_keys[@]}" "${reserve_args[@]}")
held=$(cli XLEN "$k:events")
if (( held < n )); then
  echo "script-cost.sh: only $held of $n reserve.lua calls made a hold: the arguments no longer match $lua/reserve.lua" >&2
  exit 1
fi
fresh_sale 0
sold_out=$(counted "$(load "$reserve_script")" "${#reserve_keys[@]}" "${reserve_keys[@]}" "${reserve_args[@]}")


echo "== instructions per call, Redis side (callgrind, $n calls each, scripts from $lua/)"
printf '%-58s %9s\n' "empty script, reserve.lua's ${#reserve_keys[@]} keys and ${#reserve_args[@]} arguments" "$empty"
printf '%-58s %9s\n' "minimal reserve script, its own 3 keys and 2 arguments" "$minimal_own"
printf '%-58s %9s\n' "minimal reserve script, reserve.lua's arguments" "$minimal_wide"
printf '%-58s %9s\n' "contract floor (contract-reserve.lua), a new hold" "$contract_hold"
printf '%-58s %9s\n' "reserve.lua, a new hold" "$hold"
printf '%-58s %9s\n' "reserve.lua, sold out" "$sold_out"
awk -v h="$hold" -v m="$minimal_own" -v w="$minimal_wide" -v e="$empty" -v c="$contract_hold" 'BEGIN {
  printf "reserve.lua hold / minimal script: %.2fx (with the same arguments: %.2fx)\n", h / m, h / w;
  printf "contract floor / minimal script: %.2fx; reserve.lua hold / contract floor: %.2fx\n", c / m, h / c;
  printf "reserve.lua hold beyond its arguments / minimal beyond the same: %.2fx\n", (h - e) / (w - e) }'
