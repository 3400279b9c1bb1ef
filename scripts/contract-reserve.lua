-- The least a reserve can do and still keep the gate's contract, the second floor
-- reserve.lua's cost is measured against (scripts/script-cost.sh). scripts/minimal-reserve.lua
-- only reads the stock, decrements it, writes a hold and appends an event; a decision the API
-- promises also needs, each one Redis command:
--   - the idempotency record read first and written last (one reservation per key, the same
--     answer to a retry, for the idempotency ttl);
--   - Redis's clock (TIME: windows and deadlines agree across gates);
--   - the sale's state, window, per-buyer limit, hold ttl and price (its packed `decide` field);
--   - the buyer's count with the stock, and the count written back (the per-buyer limit);
--   - the hold's deadline in the SKU's `holds` set (the expiry sweeper finds it there).
-- It takes reserve.lua's KEYS and ARGV (see its header) and answers as it does, without the
-- optional groups (rate limit, quota, client caps, ticket, own fields: perf.sh's calls send
-- none), without the sale's halted, paused, window and room refusals' branches beyond the state,
-- and without the buyers set that the gate's sold-out shortcut reads.
local stored = redis.call('GET', KEYS[4])
if stored then
  -- The stored answer without the fingerprint after it.
  return 'replayed\n' .. string.match(stored, '^(.*)\n[^\n]*$')
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state, limit, ttl_s, price, currency = string.match(redis.call('HGET', KEYS[1], 'decide'),
  '^([^\n]*)\n[^\n]*\n[^\n]*\n([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n')
if state ~= 'open' then
  return 'refused\nsale_not_open\n0'
end
local counts = redis.call('MGET', KEYS[3], KEYS[2])
local holding, stock = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
local qty = tonumber(ARGV[3])
if holding + qty > tonumber(limit) then
  return 'refused\nbuyer_limit_reached\n' .. limit
end
if stock < qty then
  return 'refused\nsold_out\n' .. string.format('%d', stock)
end
local created = string.format('%d', now_ms)
local expires = string.format('%d', now_ms + tonumber(ttl_s) * 1000)
redis.call('DECRBY', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], string.format('%d', holding + qty), 'KEEPTTL')
local packed = ARGV[1] .. '\n' .. ARGV[2] .. '\n' .. ARGV[6] .. '\n' .. ARGV[3] .. '\n' .. price ..
  '\n' .. currency .. '\n' .. created .. '\n' .. expires
redis.call('HSET', KEYS[5], 'hold', packed, 'status', 'held')
redis.call('ZADD', KEYS[6], expires, ARGV[1])
local answer = ARGV[1] .. '\n' .. ARGV[3] .. '\n' .. price .. '\n' .. currency .. '\n' .. created ..
  '\n' .. expires .. '\nheld'
redis.call('SET', KEYS[4], answer .. '\n' .. ARGV[4], 'EX', ARGV[5])
local event_id = redis.call('XADD', KEYS[7], '*', 'type', 'reserved', 'hold', packed)
return 'created\n' .. answer .. '\n' .. event_id
