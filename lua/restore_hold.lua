-- restore_hold.lua — put back a hold Redis lost, from its Postgres record (resync).
--
-- Only a hold Redis no longer has is restored, so a hold Redis still knows is never changed and
-- the script may run any number of times. A restored held or committed hold counts against its
-- buyer's limit again, and its idempotency record comes back so that a retry replays it instead
-- of taking a second hold. The check runs before the first write.
--
-- KEYS: 1 hold (hash), 2 buyer (string), 3 idem (hash), 4 holds (zset), 5 buyers (set)
-- ARGV: 1 id, 2 sku, 3 buyer, 4 quantity, 5 price, 6 currency, 7 created ms, 8 expires ms,
--       9 status, 10 idempotency key, 11 request fingerprint, 12 idempotency ttl s
-- Returns: 1 when restored, 0 when Redis already had the hold

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'sku', ARGV[2], 'buyer', ARGV[3], 'q', ARGV[4],
  'price', ARGV[5], 'cur', ARGV[6], 'created', ARGV[7], 'expires', ARGV[8], 'status', ARGV[9],
  'idem', ARGV[10])
if ARGV[9] == 'held' then
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[1])
else
  -- A terminal hold lives as long as its idempotency record, as when it left 'held'.
  redis.call('EXPIRE', KEYS[1], ARGV[12])
end
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('EXPIRE', KEYS[5], ARGV[12])
if ARGV[9] == 'held' or ARGV[9] == 'committed' then
  redis.call('INCRBY', KEYS[2], ARGV[4])
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'fp', ARGV[11], 'id', ARGV[1], 'q', ARGV[4], 'price', ARGV[5],
    'cur', ARGV[6], 'created', ARGV[7], 'expires', ARGV[8], 'status', ARGV[9])
  redis.call('EXPIRE', KEYS[3], ARGV[12])
end
return 1
