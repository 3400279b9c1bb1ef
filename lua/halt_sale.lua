-- halt_sale.lua — stop a sale's new holds until a resync (docs/DESIGN.md §2, fencing).
-- Preceded by sale.lua.
--
-- The settler found the SKU's stream no longer holding its settlement cursor: Redis lost data,
-- was rolled back or failed over to a replica that lagged, so its stock and idempotency records
-- may be stale and every hold it admits now may be sold twice. reserve.lua refuses every new hold
-- with `resync_required` while `halted` is set; load_sale.lua (the resync's load) clears it by
-- rewriting the meta hash. Holds already given may still be paid or released.
--
-- KEYS: 1 meta (hash), 2 the sale-changed channel
-- ARGV: 1 the reason, 2 'PUBLISH' | 'SPUBLISH', 3 sku
-- Returns: 1 when the sale was halted now, 0 when it was halted already or is not in Redis.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local was = redis.call('HSETNX', KEYS[1], 'halted', ARGV[1])
sale_pack(KEYS[1])
-- Every gate drops its sold-out shortcut, so the refusal is the gate's, not a stale sold_out.
redis.call(ARGV[2], KEYS[2], ARGV[3])
return was
