-- sale_admin.lua — set a live sale's state (open / paused) or its waiting room. Stock changes go
-- through adjust_sale.lua, which records them in the stream. Preceded by sale.lua.
--
-- A sale that is not live in Redis (no meta hash) is left alone: prewarm loads it from Postgres,
-- which the caller has already updated. The check runs before the first write.
--
-- KEYS: 1 meta (hash), 2 stock (string), 3 the sale-changed channel
-- ARGV: 1 'state', 2 the new state; or 1 'room', 2 '<enabled 0|1> <admit per second> <window s>'; 3 'PUBLISH' | 'SPUBLISH' (how to announce on KEYS[3]),
--       4 sku (every gate instance drops its sold-out shortcut for the SKU)
-- Returns: 1 when the live sale was changed, 0 when the sale is not live

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == 'state' then
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
elseif ARGV[1] == 'room' then
  local enabled, rate, window = string.match(ARGV[2], '^(%d) (%d+) (%d+)$')
  if not enabled then
    return redis.error_reply('malformed room settings ' .. ARGV[2])
  end
  redis.call('HSET', KEYS[1], 'room', enabled, 'room_rate', rate, 'room_window_s', window)
else
  return redis.error_reply('unknown operation ' .. tostring(ARGV[1]))
end
sale_pack(KEYS[1])
redis.call(ARGV[3], KEYS[3], ARGV[4])
return 1
