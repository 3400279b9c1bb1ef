-- rerecord_hold.lua — record again, from the hold itself, decisions its stream lost (resync).
-- Preceded by hold.lua.
--
-- When a stream was lost or fenced (fence_stream.lua), a hold Redis decided may be missing from
-- Postgres, or be further along in Redis than in Postgres. This appends the events that bring
-- Postgres to the hold's state: the reservation (when Postgres lacks the hold) and its
-- transition (when it left 'held'). The settler then applies them like any other: a hold that
-- no longer fits Postgres stock is rejected and written back through the outbox. Appending an
-- event Postgres already applied is harmless: inserts skip a known id and transitions move only
-- holds still 'held'.
--
-- KEYS: 1 hold (hash), 2 events (stream)
-- ARGV: 1 hold id, 2 '1' to record the reservation itself (Postgres lacks the hold), else '0'
-- Returns: the id of the last entry appended, or '' when there was nothing to record (the hold
-- is gone or rejected, or still held and already in Postgres)

local hold = hold_read(redis.call('HGETALL', KEYS[1]))
if not hold or not hold.status or hold.status == 'rejected' then
  return ''
end
local last = ''
if ARGV[2] == '1' then
  -- The caller's own fields, as reserve.lua records them: only when the hold has them.
  local own = {}
  if hold.ref then own[#own + 1] = 'ref'; own[#own + 1] = hold.ref end
  if hold.meta then own[#own + 1] = 'meta'; own[#own + 1] = hold.meta end
  -- A hold an earlier version wrote field by field is packed here, as reserve.lua packs it now.
  local packed = hold.hold or hold_pack(ARGV[1], hold.buyer, hold.idem, hold.q, hold.price,
    hold.cur, hold.created, hold.expires)
  last = append_reserved(KEYS[2], packed, own)
end
if hold.status ~= 'held' then
  last = redis.call('XADD', KEYS[2], '*', 'type', hold.status, 'id', ARGV[1], 'q', hold.q)
end
return last
