-- hold.lua — a hold's record: its hash (docs/DESIGN.md §4) and its `reserved` entry in the SKU's
-- stream. Not a script: put in front of the scripts that write or read a hold's fields
-- (reserve.lua, transition.lua, restore_hold.lua, rerecord_hold.lua; see src/gate/scripts.rs).
--
-- A hold's eight fixed fields travel packed in one value: id, buyer, idempotency key,
-- quantity, unit price, currency, created ms and expires ms, separated by newlines (none of them
-- holds one: ids and buyers are validated, keys are printable ASCII). The same string is the
-- hash's `hold` field and the stream entry's: a hash field or a reply value costs Redis and the
-- settler about 1,000 instructions each, and the fields written one by one were the largest
-- command of a new hold. `status` stays a field of its own (every transition writes it), and so
-- do the caller's `ref` and `meta` and the `client` tiers, written only when the hold has them.
-- A hold or an entry an earlier version wrote field by field is still read.

local function hold_pack(id, buyer, idem, q, price, cur, created, expires)
  return id .. '\n' .. buyer .. '\n' .. idem .. '\n' .. q .. '\n' .. price .. '\n' .. cur .. '\n' ..
    created .. '\n' .. expires
end

-- The hold's fields by name from its hash's HGETALL answer (a flat name, value list), the
-- packed ones unpacked; nil when the hash is empty.
local function hold_read(fields)
  if #fields == 0 then
    return nil
  end
  local hold = {}
  for i = 1, #fields, 2 do
    hold[fields[i]] = fields[i + 1]
  end
  if hold.hold then
    local _
    _, hold.buyer, hold.idem, hold.q, hold.price, hold.cur, hold.created, hold.expires =
      string.match(hold.hold, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)$')
  end
  return hold
end

-- Appends the hold's `reserved` entry: its packed fields, then the caller's own `ref` and `meta`
-- when given (own: their names and values, or empty).
local function append_reserved(stream, packed, own)
  return redis.call('XADD', stream, '*', 'type', 'reserved', 'hold', packed, unpack(own))
end
