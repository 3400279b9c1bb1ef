-- restore_hold.lua — make Redis follow a hold's Postgres record (resync). Preceded by
-- idempotency.lua and hold.lua.
--
-- A hold Redis lost is put back. A hold Redis still has is left alone, unless Redis says 'held'
-- while Postgres already has it terminal (Redis lost the transition, e.g. a failover to a replica
-- that lagged): then Redis follows Postgres, as transition.lua would have moved it, except for
-- stock, which resync loads from Postgres afterwards. The script may run any number of times.
-- A restored hold's idempotency record comes back so that a retry replays it instead of taking a
-- second hold. Buyer counts are not touched here: resync sets them from Postgres afterwards
-- (set_buyer_counts.lua), since a count Redis kept would otherwise be counted twice for a hold
-- whose record merely expired. The checks run before the first write.
--
-- KEYS: 1 hold (hash), 2 idem (idempotency.lua), 3 holds (zset), 4 buyers (set),
--       5 the live-hold counter of the client recorded in the hold (any key of the SKU if none),
--       6 and 7 the counters of the /56 and /48 it records for an IPv6 client (likewise)
-- ARGV: 1 id, 2 buyer, 3 quantity, 4 price, 5 currency, 6 created ms, 7 expires ms,
--       8 status, 9 idempotency key, 10 request fingerprint, 11 idempotency ttl s,
--       12 the caller's reference, 13 its metadata ('' = none)
-- Returns: 'restored', 'followed' (a held hold moved to the Postgres status) or 'kept'

local status, client = unpack(redis.call('HMGET', KEYS[1], 'status', 'client'))
if status then
  if status ~= 'held' or ARGV[8] == 'held' then
    return 'kept'
  end
  redis.call('HSET', KEYS[1], 'status', ARGV[8])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[11]))
  redis.call('ZREM', KEYS[3], ARGV[1])
  if client then
    local counters, tier = {KEYS[5], KEYS[6], KEYS[7]}, 0
    for _ in string.gmatch(client, '%S+') do
      tier = tier + 1
      if redis.call('DECR', counters[tier]) <= 0 then redis.call('DEL', counters[tier]) end
    end
  end
  idem_move(KEYS[2], ARGV[1], ARGV[8])
  return 'followed'
end
redis.call('HSET', KEYS[1], 'hold', hold_pack(ARGV[1], ARGV[2], ARGV[9], ARGV[3], ARGV[4], ARGV[5],
  ARGV[6], ARGV[7]), 'status', ARGV[8])
if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'ref', ARGV[12]) end
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'meta', ARGV[13]) end
if ARGV[8] == 'held' then
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
else
  -- A terminal hold lives as long as its idempotency record, as when it left 'held'.
  redis.call('EXPIRE', KEYS[1], ARGV[11])
end
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[11])
if redis.call('EXISTS', KEYS[2]) == 0 then
  idem_write(KEYS[2], ARGV[11], ARGV[8], ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[10])
end
return 'restored'
