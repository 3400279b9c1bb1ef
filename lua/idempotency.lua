-- idempotency.lua — the idempotency record (docs/DESIGN.md §4). Not a script: put in front of
-- the scripts that write, read or move it (reserve.lua, transition.lua, reject.lua,
-- restore_hold.lua; see src/gate/scripts.rs).
--
-- A record is one string: the answer's status, hold id, quantity, price, currency, created ms
-- and expires ms, then the request fingerprint, separated by newlines (none of them holds one).
-- One SET with its TTL writes it and one GET reads it, where a hash took a write, an EXPIRE and
-- an eight-field read on every new hold. A record a gate of an earlier version wrote as a hash
-- is still read and moved as one, until its TTL ends.

local IDEM_FIELDS = {'status', 'id', 'q', 'price', 'cur', 'created', 'expires', 'fp'}

-- The record at key, or nil; and whether it is a hash of an earlier version.
local function idem_read(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' and raw.err then
    local values = redis.call('HMGET', key, unpack(IDEM_FIELDS))
    local record = {}
    for i, field in ipairs(IDEM_FIELDS) do record[field] = values[i] end
    return record, true
  end
  if not raw then
    return nil, false
  end
  local status, id, q, price, cur, created, expires, fp = string.match(raw,
    '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
  return {status = status, id = id, q = q, price = price, cur = cur, created = created,
    expires = expires, fp = fp}, false
end

local function idem_encode(record)
  return record.status .. '\n' .. record.id .. '\n' .. record.q .. '\n' .. record.price .. '\n' ..
    record.cur .. '\n' .. record.created .. '\n' .. record.expires .. '\n' .. record.fp
end

-- Writes a new record that lives ttl_s seconds.
local function idem_write(key, record, ttl_s)
  redis.call('SET', key, idem_encode(record), 'EX', ttl_s)
end

-- Moves the record to status when it answers for hold id (a key reused after its record
-- expired answers for another hold, which this one's transitions must not touch).
local function idem_move(key, id, status)
  local record, hash = idem_read(key)
  if not record or record.id ~= id then
    return
  end
  if hash then
    redis.call('HSET', key, 'status', status)
  else
    record.status = status
    redis.call('SET', key, idem_encode(record), 'KEEPTTL')
  end
end

