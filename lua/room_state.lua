-- room_state.lua — move a sale's line to now and read it (docs/DESIGN.md §12): what a gate
-- caches to answer polls without Redis. Preceded by room.lua.
--
-- KEYS: 1 meta  2 room  3 admits  4 used  5 stock  6 holds (see room.lua)
-- Returns {'line', now_ms, enabled, rate, window_s, limit, selling, issued, frontier,
--          expired_through, expired, sold_out_from, live, stock, left, admits...}
-- or {'unknown_sku'}.

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', KEYS[1], 'room', 'room_rate', 'room_window_s', 'limit', 'state', 'starts_ms', 'ends_ms', 'halted')
if not m[5] then
  return {'unknown_sku'}
end
local s = room_settings(m, now_ms)
local k = {room = KEYS[2], admits = KEYS[3], used = KEYS[4], stock = KEYS[5], holds = KEYS[6]}
local line = room_line(k, s, now_ms)
local reply = {'line', room_int(now_ms), s.enabled and '1' or '0', room_int(s.rate), room_int(s.window_ms / 1000),
  room_int(s.limit), s.selling and '1' or '0', room_int(line.issued), room_int(line.frontier),
  room_int(line.expired_through), room_int(line.expired), room_int(line.sold_out_from), room_int(line.live),
  room_int(line.stock), room_int(line.left)}
for _, entry in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
  reply[#reply + 1] = entry
end
return reply
