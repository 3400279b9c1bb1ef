-- adjust_sale.lua — change a live sale: its metadata and its total (docs/DESIGN.md §10).
-- Preceded by sale.lua.
--
-- A change of stock is decided here, against what Redis has handed out, and appended to the
-- SKU's stream like any decision: the settler applies it to Postgres in stream order, where
-- `available` is exactly what Redis had at that point, so Postgres cannot refuse it. A new total
-- below the units already held or sold is refused before anything is written.
--
-- Retries are safe: a target total is absolute (the second run finds nothing to move), and an
-- added quantity carries an operation key whose record answers a second run.
--
-- KEYS: 1 meta (hash), 2 stock (string), 3 events (stream), 4 the operation's record (any key of
--       the SKU when there is no operation key), 5 the sale-changed channel
-- ARGV: 1 'total' | 'add', 2 the new total | units to add, 3 operation key ('' = none),
--       4 the record's ttl s, 5 'PUBLISH' | 'SPUBLISH' (how to announce on KEYS[5]), 6 sku (every gate instance
--       drops its sold-out shortcut for the SKU), then meta field/value pairs to set
-- Returns: {'not_live'} | {'below_held', total, stock} | {'replayed', total, stock}
--          | {'done', total, stock, event id or ''}

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_live'}
end
if ARGV[3] ~= '' then
  local done = redis.call('HMGET', KEYS[4], 'total', 'stock')
  if done[1] then
    return {'replayed', done[1], done[2]}
  end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if not total then
  return redis.error_reply('the sale was loaded without a total: prewarm it again')
end
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
local delta
if ARGV[1] == 'total' then
  delta = tonumber(ARGV[2]) - total
elseif ARGV[1] == 'add' then
  delta = tonumber(ARGV[2])
else
  return redis.error_reply('unknown adjustment ' .. tostring(ARGV[1]))
end
if stock + delta < 0 then
  return {'below_held', tostring(total), tostring(stock)}
end

-- Every write below is unconditional.
if #ARGV > 6 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 7))
  sale_pack(KEYS[1])
end
local event = ''
if delta ~= 0 then
  redis.call('INCRBY', KEYS[2], delta)
  redis.call('HSET', KEYS[1], 'total', total + delta)
  event = redis.call('XADD', KEYS[3], '*', 'type', 'stock', 'q', delta, 'cause', ARGV[1])
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[4], 'total', total + delta, 'stock', stock + delta)
  redis.call('EXPIRE', KEYS[4], tonumber(ARGV[4]))
end
redis.call(ARGV[5], KEYS[5], ARGV[6])
return {'done', tostring(total + delta), tostring(stock + delta), event}
