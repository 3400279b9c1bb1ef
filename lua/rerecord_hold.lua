-- rerecord_hold.lua — record again, from the hold itself, decisions its stream lost (resync).
-- Preceded by hold_event.lua.
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

local status, buyer, idem, q, price, cur, created, expires, ref, meta = unpack(redis.call('HMGET',
  KEYS[1], 'status', 'buyer', 'idem', 'q', 'price', 'cur', 'created', 'expires', 'ref', 'meta'))
if not status or status == 'rejected' then
  return ''
end
local last = ''
if ARGV[2] == '1' then
  -- The caller's own fields, as reserve.lua records them: only when the hold has them.
  local own = {}
  if ref then own[#own + 1] = 'ref'; own[#own + 1] = ref end
  if meta then own[#own + 1] = 'meta'; own[#own + 1] = meta end
  last = append_reserved(KEYS[2], ARGV[1], buyer, idem, q, price, cur, created, expires, own)
end
if status ~= 'held' then
  last = redis.call('XADD', KEYS[2], '*', 'type', status, 'id', ARGV[1], 'q', q)
end
return last
