# Sourced by perf.sh and script-cost.sh: the lua/reserve.lua call they run under redis-benchmark,
# in one place so that it follows the script's KEYS and ARGV (see its header).
#
#   flashgate_reserve_call PREFIX SKU
#       set RESERVE_KEYS and RESERVE_ARGS for the SKU whose keys start with PREFIX (its hash tag
#       included): every call a new buyer and hold (__rand_int__), no optional group (rate
#       limit, hold quota, client caps, ticket, own fields all off, as in perf.sh's gate)

flashgate_reserve_call() {
  local k=$1 sku=$2
  RESERVE_KEYS=("$k:meta" "$k:stock" "$k:buyer:b__rand_int__" "$k:idem:b__rand_int__:k"
    "$k:hold:h__rand_int__" "$k:holds" "$k:events" "$k:buyers")
  # hold id, buyer, quantity, fingerprint, idempotency ttl s, idempotency key, sku, durability,
  # the optional groups that follow (none)
  RESERVE_ARGS=(h__rand_int__ b__rand_int__ 1 "$sku|1" 86400 k "$sku" 0 "")
}

#   flashgate_reserve_script LUA_DIR
#       print reserve.lua as the gate sends it: behind the files it is put after
#       (src/gate/scripts.rs). A tree from before sale.lua, hold_event.lua or hold.lua (which
#       replaced hold_event.lua) is sent without the ones it lacks.
flashgate_reserve_script() {
  local dir=$1 file
  for file in idempotency sale hold_event hold room reserve; do
    case $file in sale | hold_event | hold) [ -f "$dir/$file.lua" ] || continue ;; esac
    cat "$dir/$file.lua"
  done
}

#   flashgate_pack_sale LUA_DIR META_KEY REDIS_CLI_ARGS...
#       pack the sale's `decide` field as load_sale.lua does, for a sale written field by field
#       (redis-cli REDIS_CLI_ARGS reaches its Redis); nothing for a tree without sale.lua
flashgate_pack_sale() {
  local dir=$1 key=$2
  shift 2
  [ -f "$dir/sale.lua" ] || return 0
  redis-cli "$@" EVAL "$(cat "$dir/sale.lua"; echo 'sale_pack(KEYS[1])')" 1 "$key" >/dev/null
}
