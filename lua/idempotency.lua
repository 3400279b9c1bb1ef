-- idempotency.lua — the idempotency record (docs/DESIGN.md §4). Not a script: put in front of
-- the scripts that write, read or move it (reserve.lua, transition.lua, reject.lua,
-- restore_hold.lua; see src/gate/scripts.rs).
--
-- A record is one string: the answer's status, hold id, quantity, price, currency, created ms
-- and expires ms, then the request fingerprint, separated by newlines (none of them holds one).
-- One SET with its TTL writes it and one GET reads it, where a hash took a write, an EXPIRE and
-- an eight-field read on every new hold. A record a gate of an earlier version wrote as a hash
-- is still read and moved as one, until its TTL ends.

-- The record at key, or nil; and whether it is a hash of an earlier version.
local function idem_read(key)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'table' and raw.err then
    local v = redis.call('HMGET', key, 'status', 'id', 'q', 'price', 'cur', 'created', 'expires', 'fp')
    return {status = v[1], id = v[2], q = v[3], price = v[4], cur = v[5], created = v[6],
      expires = v[7], fp = v[8]}, true
  end
  if not raw then
    return nil, false
  end
  local status, id, q, price, cur, created, expires, fp = string.match(raw,
    '^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$')
  return {status = status, id = id, q = q, price = price, cur = cur, created = created,
    expires = expires, fp = fp}, false
end

-- The fields are passed one by one, not as a record table: a new hold writes a record on every
-- call, and a table is an allocation the script need not make.
local function idem_encode(status, id, q, price, cur, created, expires, fp)
  return status .. '\n' .. id .. '\n' .. q .. '\n' .. price .. '\n' .. cur .. '\n' .. created .. '\n' ..
    expires .. '\n' .. fp
end

-- Writes a new record that lives ttl_s seconds.
local function idem_write(key, ttl_s, status, id, q, price, cur, created, expires, fp)
  redis.call('SET', key, idem_encode(status, id, q, price, cur, created, expires, fp), 'EX', ttl_s)
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
    redis.call('SET', key, idem_encode(status, record.id, record.q, record.price, record.cur,
      record.created, record.expires, record.fp), 'KEEPTTL')
  end
end

