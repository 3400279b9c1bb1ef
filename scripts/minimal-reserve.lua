-- The least a reserve can do, the floor reserve.lua's cost is measured against (scripts/perf.sh,
-- scripts/script-cost.sh): read the stock, decrement it, write a 3-field hold hash, append a
-- 6-field event. KEYS: stock, hold, events; ARGV: hold id, buyer (further ones are ignored).
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock < 1 then return {'refused', 'sold_out'} end
redis.call('DECRBY', KEYS[1], 1)
redis.call('HSET', KEYS[2], 'buyer', ARGV[2], 'q', '1', 'status', 'held')
return redis.call('XADD', KEYS[3], '*', 'type', 'reserved', 'id', ARGV[1], 'q', '1')
