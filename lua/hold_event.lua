-- hold_event.lua — a new hold's `reserved` entry in the SKU's stream (docs/DESIGN.md §4). Not a
-- script: put in front of reserve.lua and rerecord_hold.lua (see src/gate/scripts.rs), the two
-- scripts that append one.
--
-- The hold's fields travel packed in one field, `hold`: id, buyer, idempotency key, quantity,
-- unit price, currency, created ms and expires ms, separated by newlines (none of them holds
-- one: ids and buyers are validated, keys are printable ASCII). The settler parses every value
-- of a stream reply on its own (~1,000 instructions each), and a hold's eight fields written as
-- sixteen names and values were most of its reading; the settler still reads an entry written
-- field by field (an earlier version's). The caller's own `ref` and `meta` follow as fields of
-- their own when given (own: their names and values, or empty).
local function append_reserved(stream, id, buyer, idem, q, price, cur, created, expires, own)
  return redis.call('XADD', stream, '*', 'type', 'reserved', 'hold', id .. '\n' .. buyer .. '\n' ..
    idem .. '\n' .. q .. '\n' .. price .. '\n' .. cur .. '\n' .. created .. '\n' .. expires,
    unpack(own))
end
