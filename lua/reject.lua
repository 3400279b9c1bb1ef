-- reject.lua — write back a hold that Postgres refused (docs/DESIGN.md §1). Preceded by
-- idempotency.lua.
--
-- Postgres refuses a hold Redis admitted only after Redis lost data or drifted. The hold becomes
-- 'rejected' and the buyer's count drops. Refused for stock, its units are NOT given back to
-- Redis stock: Postgres never had them. Refused as a duplicate idempotency key (a key reused
-- after Redis forgot it), Postgres still has the units the hold took from Redis stock: they are
-- given back and announced, or they would never be sold. Idempotent: a second run finds the
-- hold already rejected. All checks run before the first write.
--
-- KEYS: 1 hold (hash), 2 buyer (string), 3 idem (idempotency.lua), 4 holds (zset), 5 the live-hold counter
--       of the client recorded in the hold (any key of the SKU when it records none), 6 stock
--       (string), 7 the sale-changed channel, 8 and 9 the counters of the /56 and /48 it records
--       for an IPv6 client (any key of the SKU if none)
-- ARGV: 1 hold id, 2 quantity, 3 idempotency ttl s (the rejected hold then expires),
--       4 '1' when Postgres has the units (a duplicate key), else '0',
--       5 'PUBLISH' | 'SPUBLISH' (how to announce on KEYS[7]), 6 sku
-- Returns: the hold's status before the call ('held', 'committed', ...), 'rejected' when it was
-- already rejected, or 'missing'.

local status, client = unpack(redis.call('HMGET', KEYS[1], 'status', 'client'))
if not status then
  return 'missing'
end
if status == 'rejected' then
  return 'rejected'
end

redis.call('HSET', KEYS[1], 'status', 'rejected')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('ZREM', KEYS[4], ARGV[1])
-- Units held or bought stop counting against the buyer's limit. Released or expired units were
-- already subtracted when they left.
if status == 'held' and client then
  local counters, tier = {KEYS[5], KEYS[8], KEYS[9]}, 0
  for _ in string.gmatch(client, '%S+') do
    tier = tier + 1
    if redis.call('DECR', counters[tier]) <= 0 then redis.call('DEL', counters[tier]) end
  end
end
if status == 'held' or status == 'committed' then
  local left = redis.call('DECRBY', KEYS[2], ARGV[2])
  if left <= 0 then redis.call('DEL', KEYS[2]) end
end
if ARGV[4] == '1' and (status == 'held' or status == 'committed') then
  redis.call('INCRBY', KEYS[6], ARGV[2])
  redis.call(ARGV[5], KEYS[7], ARGV[6])
end
idem_move(KEYS[3], ARGV[1], 'rejected')
return status
