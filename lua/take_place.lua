-- take_place.lua — hand out a place in a sale's line (docs/DESIGN.md §12), once per buyer.
-- Preceded by room.lua.
--
-- KEYS (all under the SKU's hash tag):
--   1 meta  2 room  3 admits  4 used  5 stock  6 holds (see room.lua)
--   7 place   hash    this buyer's place: pos, at_ms
--   8 client  string  places handed out to this client (an IPv4 address or an IPv6 /64)
-- ARGV: 1 places per client (0 = no cap)   2 the client ('' = unknown)
-- Returns one of:
--   {'placed', position, issued_ms, 'new' | 'again', frontier}
--   {'refused', code, detail}   code: unknown_sku, waiting_room_off, sale_not_open, sold_out,
--                               client_limit_reached (detail: the cap)

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local m = redis.call('HMGET', KEYS[1], 'room', 'room_rate', 'room_window_s', 'limit', 'state', 'starts_ms', 'ends_ms', 'halted')
if not m[5] then
  return {'refused', 'unknown_sku', '0'}
end
local s = room_settings(m, now_ms)
if not s.enabled then
  return {'refused', 'waiting_room_off', '0'}
end
local k = {room = KEYS[2], admits = KEYS[3], used = KEYS[4], stock = KEYS[5], holds = KEYS[6]}

-- One place per buyer: taking it again answers the same place, whatever became of the line.
local mine = redis.call('HMGET', KEYS[7], 'pos', 'at_ms')
if mine[1] then
  local line = room_line(k, s, now_ms)
  return {'placed', mine[1], mine[2], 'again', room_int(line.frontier)}
end

local ends_ms = tonumber(m[7] or '0')
if m[5] == 'closed' or (ends_ms > 0 and now_ms >= ends_ms) then
  return {'refused', 'sale_not_open', '0'}
end

local line = room_line(k, s, now_ms)
local position = line.issued + 1
if (line.sold_out_from > 0 and position >= line.sold_out_from) or position >= line.first_unservable then
  return {'refused', 'sold_out', room_int(line.stock)}
end

local cap = tonumber(ARGV[1])
if cap > 0 and ARGV[2] ~= '' and tonumber(redis.call('GET', KEYS[8]) or '0') >= cap then
  return {'refused', 'client_limit_reached', room_int(cap)}
end

redis.call('HSET', KEYS[2], 'issued', room_int(position))
redis.call('HSET', KEYS[7], 'pos', room_int(position), 'at_ms', room_int(now_ms))
if cap > 0 and ARGV[2] ~= '' then
  redis.call('INCR', KEYS[8])
end
-- A place is kept while the sale may sell, and a day past its end; a sale without an end keeps it.
if ends_ms > 0 then
  redis.call('PEXPIREAT', KEYS[7], room_int(ends_ms + 86400000))
  if cap > 0 and ARGV[2] ~= '' then redis.call('PEXPIREAT', KEYS[8], room_int(ends_ms + 86400000)) end
end
-- The newcomer may be admitted at once (an empty line with credit to spend).
line = room_line(k, s, now_ms)
return {'placed', room_int(position), room_int(now_ms), 'new', room_int(line.frontier)}
