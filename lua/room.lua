-- room.lua — the waiting room's line (docs/DESIGN.md §12). Not a script of its own: it is put in
-- front of the scripts that move the line (reserve.lua, take_place.lua, room_state.lua), so that
-- all of them move it by the same rules.
--
-- The line of one SKU lives in its slot:
--   room    hash   issued          places handed out (positions 1..issued)
--                  frontier        places admitted so far (positions 1..frontier)
--                  at_ms           up to when the admit rate's credit has been spent
--                  expired_through places whose admission window has closed (1..expired_through)
--                  expired         how many of those never took a hold
--                  sold_out_from   the first place told it cannot be served (0 = none): it and
--                                  every later place stay sold out, so nobody told `sold_out` is
--                                  admitted later
--   admits list   '<ms>:<frontier>', oldest first: when the frontier passed each value (one
--                 entry per 100 ms at most), to know when each admitted place's window closes
--   used   zset   position -> position: admitted places that took their one hold
--
-- Rules, evaluated lazily whenever a script touches the line (time only moves them forward):
-- * An admitted place whose window has closed is expired.
-- * "Live" admitted places (window open, no hold yet) may each still take up to `limit` units.
-- * The frontier advances at `rate` places per second (up to 1 s of unspent credit is kept),
--   never past the last place handed out or a sold-out place, only while the sale sells, and only
--   while the stock can serve one more: live × limit < stock. So it also advances when units come
--   back (a release, an expiry, a restock) and waits while the units are held.
-- * What is left = stock + units that may come back, counted as (live holds) × limit: a hold
--   never holds more than the buyer limit, and it may yet be released or expire.
-- * A waiting place p is sold out when the places ahead of it, taking all they may, could leave
--   nothing: (live + (p - 1 - frontier)) × limit >= left.

local function room_int(n) return string.format('%.0f', n) end

-- Moves the line to now_ms and returns its state. k: room, admits, used, stock, holds keys;
-- s: rate (places/s), window_ms, limit (units per buyer), selling (the sale sells now).
local function room_line(k, s, now_ms)
  local r = redis.call('HMGET', k.room, 'issued', 'frontier', 'at_ms', 'expired_through', 'expired', 'sold_out_from')
  local line = {
    issued = tonumber(r[1] or '0'), frontier = tonumber(r[2] or '0'), at_ms = tonumber(r[3] or now_ms),
    expired_through = tonumber(r[4] or '0'), expired = tonumber(r[5] or '0'), sold_out_from = tonumber(r[6] or '0'),
  }
  -- 1. Windows that closed.
  while true do
    local head = redis.call('LINDEX', k.admits, 0)
    if not head then break end
    local sep = string.find(head, ':', 1, true)
    local at, reached = tonumber(string.sub(head, 1, sep - 1)), tonumber(string.sub(head, sep + 1))
    if at + s.window_ms > now_ms then break end
    redis.call('LPOP', k.admits)
    if reached > line.expired_through then
      local took = redis.call('ZCOUNT', k.used, line.expired_through + 1, reached)
      line.expired = line.expired + (reached - line.expired_through) - took
      redis.call('ZREMRANGEBYSCORE', k.used, '-inf', reached)
      line.expired_through = reached
    end
  end
  line.stock = tonumber(redis.call('GET', k.stock) or '0')
  if line.stock < 0 then line.stock = 0 end
  line.live = (line.frontier - line.expired_through) - redis.call('ZCOUNT', k.used, line.expired_through + 1, line.frontier)
  -- 2. Admissions.
  local admitted = 0
  if s.selling then
    local credit = math.floor((now_ms - line.at_ms) * s.rate / 1000)
    local servable = math.ceil(line.stock / s.limit) - line.live
    local waiting = line.issued - line.frontier
    if line.sold_out_from > 0 then waiting = math.min(waiting, line.sold_out_from - 1 - line.frontier) end
    admitted = math.max(0, math.min(credit, servable, waiting))
    line.at_ms = math.max(line.at_ms + admitted * 1000 / s.rate, now_ms - 1000)
  else
    line.at_ms = now_ms
  end
  if admitted > 0 then
    line.frontier = line.frontier + admitted
    line.live = line.live + admitted
    local last = redis.call('LINDEX', k.admits, -1)
    local last_at = last and tonumber(string.sub(last, 1, string.find(last, ':', 1, true) - 1))
    if last_at and last_at > now_ms - 100 then
      redis.call('LSET', k.admits, -1, room_int(last_at) .. ':' .. room_int(line.frontier))
    else
      redis.call('RPUSH', k.admits, room_int(now_ms) .. ':' .. room_int(line.frontier))
    end
  end
  -- 3. Sold out: the first waiting place that could be left nothing.
  line.left = line.stock + redis.call('ZCARD', k.holds) * s.limit
  line.first_unservable = line.frontier + 1 + math.max(0, math.ceil(line.left / s.limit) - line.live)
  if line.first_unservable <= line.issued and (line.sold_out_from == 0 or line.first_unservable < line.sold_out_from) then
    line.sold_out_from = line.first_unservable
  end
  redis.call('HSET', k.room, 'issued', room_int(line.issued), 'frontier', room_int(line.frontier),
    'at_ms', string.format('%.3f', line.at_ms), 'expired_through', room_int(line.expired_through),
    'expired', room_int(line.expired), 'sold_out_from', room_int(line.sold_out_from))
  return line
end

-- The room settings and whether the sale sells, from meta fields
-- room, room_rate, room_window_s, limit, state, starts_ms, ends_ms, halted (in that order).
local function room_settings(m, now_ms)
  local starts_ms, ends_ms = tonumber(m[6] or '0'), tonumber(m[7] or '0')
  return {
    enabled = m[1] == '1',
    rate = tonumber(m[2] or '100'),
    window_ms = tonumber(m[3] or '60') * 1000,
    limit = tonumber(m[4] or '1'),
    selling = m[5] == 'open' and not m[8] and (starts_ms == 0 or now_ms >= starts_ms) and (ends_ms == 0 or now_ms < ends_ms),
  }
end
