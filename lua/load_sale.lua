-- load_sale.lua — load a sale's metadata and stock into Redis from its Postgres record.
-- Preceded by sale.lua.
--
-- Used by prewarm and by resync; they differ only in the guard, checked before the first write
-- (a live sale is changed by adjust_sale.lua instead, which never resets its stock):
--   'new'     refuse a sale that is already live (its meta hash exists): overwriting the stock
--             of a live sale would hand units out twice;
--   'drained' the caller paused the sale, drained the settler, and read Postgres `available`
--             together with the settlement cursor; unless the stream ends exactly at that cursor
--             (an event appended since — a release or expiry racing the resync — is not in
--             `available` yet), nothing is written: drain again.
--
-- KEYS: 1 meta (hash), 2 stock (string), 3 events (stream), 4 the sale-changed channel
-- ARGV: 1 guard, 2 the settlement cursor `available` was read at ('' for an empty stream;
--       'drained' only), 3 available units, 4 'PUBLISH' | 'SPUBLISH' (how to announce on KEYS[4]), 5 sku (every gate
--       instance drops its sold-out shortcut for the SKU), then field/value pairs for meta
-- Returns: 'ok', 'live' (guard 'new') or 'moved' (guard 'drained')

if ARGV[1] == 'new' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 'live'
end
if ARGV[1] == 'drained' then
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  local last_id = ''
  if last[1] then last_id = last[1][1] end
  if last_id ~= ARGV[2] then
    return 'moved'
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
sale_pack(KEYS[1])
redis.call('SET', KEYS[2], ARGV[3])
redis.call(ARGV[4], KEYS[4], ARGV[5])
return 'ok'
