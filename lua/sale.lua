-- sale.lua — the sale fields a reserve decides on, packed (docs/DESIGN.md §4). Not a script: put
-- in front of reserve.lua and of every script that writes the meta hash (load_sale.lua,
-- sale_admin.lua, adjust_sale.lua, halt_sale.lua; see src/gate/scripts.rs).
--
-- Every new hold reads nine fields of the sale's meta hash. An HMGET of nine fields cost Redis
-- ~24,000 instructions (each field is looked up in the hash and crosses into Lua on its own); one
-- HGET of the same values packed into the field `decide` and split with one pattern costs ~10,000
-- less (scripts/script-cost.sh). The meta hash's own fields stay what every other reader uses:
-- `decide` is written from them, by the same script, after each write to them, so the two never
-- disagree outside a script.
--
-- `decide` holds, separated by newlines (none of them holds one): state, starts_ms, ends_ms,
-- limit, ttl_s, price, currency, then '1' when `halted` is set ('' when not), then `room`
-- ('' when not set). load_sale.lua always writes the first seven.

-- The nine fields, in the order above, as the hash at key has them (false where not set).
local function sale_fields(key)
  return redis.call('HMGET', key, 'state', 'starts_ms', 'ends_ms', 'limit', 'ttl_s', 'price',
    'currency', 'halted', 'room')
end

-- Rewrites `decide` from the meta hash at key; nothing when the hash does not exist.
local function sale_pack(key)
  local v = sale_fields(key)
  if not v[1] then
    return
  end
  redis.call('HSET', key, 'decide', v[1] .. '\n' .. (v[2] or '') .. '\n' .. (v[3] or '') .. '\n' ..
    (v[4] or '') .. '\n' .. (v[5] or '') .. '\n' .. (v[6] or '') .. '\n' .. (v[7] or '') .. '\n' ..
    (v[8] and '1' or '') .. '\n' .. (v[9] or ''))
end

-- The nine fields, in the order above, as HMGET would answer them (false where `halted` or
-- `room` is not set); all false when the sale is not in Redis. A meta hash written before
-- `decide` existed is read field by field.
local function sale_decides(key)
  local packed = redis.call('HGET', key, 'decide')
  if not packed then
    return sale_fields(key)
  end
  local v = {string.match(packed,
    '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')}
  if v[8] == '' then v[8] = false end
  if v[9] == '' then v[9] = false end
  return v
end
