-- reserve.lua — decide one reservation atomically (docs/DESIGN.md §1, §4). Preceded by
-- idempotency.lua, sale.lua, hold.lua and room.lua.
--
-- Every check runs before the first write, because Redis does not roll a script back: a script
-- that failed half-way would leave stock taken with no hold to show for it. The checks run in
-- this order: idempotency, per-buyer rate limit, sale halted for a resync, sale state and
-- window, the waiting room's ticket (when the sale has a room), per-buyer limit, per-buyer hold quota, per-client live-hold limit (opt-in
-- anti-scalping), stock.
-- Clocks come from Redis TIME so that gate instances with skewed clocks agree.
--
-- The script is idempotent by its own checks: if the client resends it after a dropped
-- connection, the idempotency record written by the first run answers the second.
--
-- A call sends only what its checks use: eight keys and nine arguments always, then the groups
-- ARGV[9] names, in its order. Each key and argument costs Redis about 900 instructions before the
-- script's first command (scripts/script-cost.sh), and most limits are off in most sales.
-- KEYS (all under the SKU's hash tag, so the script runs unchanged on Redis Cluster):
--   1 meta      hash    state, starts_ms, ends_ms, limit, ttl_s, price, currency, halted, room,
--                       read packed from its `decide` field (sale.lua)
--   2 stock     string  units a new hold may take
--   3 buyer     string  units this buyer holds or bought (invariant 4); expires at the sale's
--                       end plus the idempotency ttl
--   4 idem      string  the stored answer and request fingerprint for (buyer, key)
--                       (idempotency.lua)
--   5 hold      hash    the new hold's state: its packed fields and status (hold.lua)
--   6 holds     zset    hold id -> deadline (ms), for the expiry sweeper
--   7 events    stream  every decision, in order, for the settler (a hold's: hold.lua)
--   8 buyers    set     every buyer who got a hold on this SKU within the idempotency ttl (for the
--                       sold-out shortcut: its ttl is renewed on every addition, so it holds every
--                       buyer whose hold may still be replayed, and no more once the sale is quiet)
-- ARGV:
--   1 hold id            2 buyer id          3 quantity        4 request fingerprint
--   5 idempotency ttl s  6 idempotency key   7 sku
--   8 '1' when the caller WAITs for a replica (FLASHGATE_DURABILITY=replica)
--   9 the optional groups that follow, a letter each, in this order ('' = none):
--     r  the per-buyer rate limit      ARGV: emission interval us, burst
--                                       KEYS: rl (string: the buyer's GCRA theoretical arrival
--                                             time, in microseconds)
--     q  the per-buyer hold quota      ARGV: holds per quota window, window ms
--                                       KEYS: quota (string: holds this buyer took on this SKU
--                                             in the current window)
--     c  live holds per client         ARGV: the client's tiers, narrowest first, space-separated
--                                             (an IPv4 address, or an IPv6 /64, /56 and /48;
--                                             '' = unknown), live holds per client, per /56, per
--                                             /48 (0 = no limit at that tier)
--                                       KEYS: client, client56, client48 (strings: live holds of
--                                             the tier; any key of the SKU where IPv4 has none)
--     t  the caller's waiting-room ticket, already verified by the gate
--                                       ARGV: its position
--                                       KEYS: room, admits, used (see room.lua)
--     o  the caller's own fields       ARGV: reference, metadata as canonical JSON ('' = none
--                                             for either; both are part of the fingerprint, so a
--                                             replay answers the request's own)
--                                       KEYS: none
-- Returns one string, its fields separated by newlines (none of them holds one), one of:
--   created  id quantity price currency created_ms expires_ms status event_id
--   replayed id quantity price currency created_ms expires_ms status
--   refused  code detail   detail: retry-after us, units left, limit, or opening ms
-- One string, not an array: the gate's RESP parser spent more on the nine values of an array
-- reply than on the rest of the hold's Redis round trip.
--
-- The client counters are released by transition.lua and reject.lua when the hold leaves 'held'
-- (the hold records its client's tiers, and each script releases one counter per tier); their
-- TTL, renewed on every new hold, bounds them if that never happens (a hold lost with Redis data).

local qty = tonumber(ARGV[3])

-- Lua 5.1's tostring keeps 14 significant digits; microsecond clocks have 16. Formatting is
-- sprintf either way, and so is Redis's for a number handed to redis.call: a figure is turned
-- into its string once, and an argument that came as a string is passed on as that string.
-- Every figure given to it is a whole number, so '%d' (a C long) formats it exactly, without
-- the floating-point conversion '%.0f' costs (~2,000 instructions a call).
local function int(n) return string.format('%d', n) end

-- 1. Idempotency: a key seen before answers with what it answered then.
local stored = idem_read(KEYS[4])
if stored then
  if stored.fp ~= ARGV[4] then
    return 'refused\nidempotency_key_reused\n0'
  end
  if ARGV[8] == '1' then
    -- A write, so that the caller's WAIT also covers the original decision, which another
    -- connection may have sent: replication is in order, and this lands after it.
    redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
  end
  return 'replayed\n' .. stored.id .. '\n' .. stored.q .. '\n' .. stored.price .. '\n' .. stored.cur
    .. '\n' .. stored.created .. '\n' .. stored.expires .. '\n' .. stored.status
end

-- The optional groups ARGV[9] names: their values, and their keys (nil when not sent).
local interval, burst, rl_key = 0, 0, nil
local quota, quota_window, quota_key = 0, nil, nil
local client_tiers, client_limits, client_keys = nil, nil, nil
local ticket, ticket_arg, room_keys_at = 0, nil, nil
local reference, metadata = '', ''
local a, k = 10, 9
for i = 1, #ARGV[9] do
  local group = string.sub(ARGV[9], i, i)
  if group == 'r' then
    interval, burst, rl_key = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), KEYS[k]
    a, k = a + 2, k + 1
  elseif group == 'q' then
    quota, quota_window, quota_key = tonumber(ARGV[a]), ARGV[a + 1], KEYS[k]
    a, k = a + 2, k + 1
  elseif group == 'c' then
    client_tiers = ARGV[a]
    client_limits = {tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])}
    client_keys = {KEYS[k], KEYS[k + 1], KEYS[k + 2]}
    a, k = a + 4, k + 3
  elseif group == 't' then
    ticket, ticket_arg, room_keys_at = tonumber(ARGV[a]), ARGV[a], k
    a, k = a + 1, k + 3
  elseif group == 'o' then
    reference, metadata = ARGV[a], ARGV[a + 1]
    a = a + 2
  else
    -- Before any write: a letter this script does not know would misread every group after it.
    return redis.error_reply('reserve.lua: unknown argument group ' .. group)
  end
end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

-- 2. Per-buyer rate limit (GCRA). The new arrival time is written below, after every check,
-- whether or not the rest of the decision admits the hold: an attempt counts as an attempt.
local new_tat
if interval > 0 then
  local tat = tonumber(redis.call('GET', rl_key) or '0')
  if tat < now_us then tat = now_us end
  new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now_us then
    return 'refused\nrate_limited\n' .. int(allow_at - now_us)
  end
end

-- 3. Sale state and window, from the meta hash's packed `decide` field (sale.lua).
-- The room's own settings are read only for a sale with a room (3b): each field HMGET asks for
-- is a scan of the sale's hash.
local meta = sale_decides(KEYS[1])
if not meta[1] then
  return 'refused\nunknown_sku\n0'
end
local starts_ms, ends_ms = tonumber(meta[2]), tonumber(meta[3])
local refusal
if meta[8] then
  -- The settler found this sale's stream broken (halt_sale.lua): nothing is sold until a resync.
  refusal = 'refused\nresync_required\n0'
elseif meta[1] == 'paused' then
  refusal = 'refused\nsale_paused\n0'
elseif meta[1] ~= 'open' or (ends_ms > 0 and now_ms >= ends_ms) then
  refusal = 'refused\nsale_not_open\n0'
elseif starts_ms > 0 and now_ms < starts_ms then
  refusal = 'refused\nsale_not_open\n' .. int(starts_ms)
end

-- 3b. The waiting room: a sale with its room on sells only to an admitted place, once.
local room_keys
if not refusal and meta[9] == '1' then
  if ticket == 0 then
    refusal = 'refused\nnot_your_turn\n0'
  else
    room_keys = {room = KEYS[room_keys_at], admits = KEYS[room_keys_at + 1],
      used = KEYS[room_keys_at + 2], stock = KEYS[2], holds = KEYS[6]}
    local pace = redis.call('HMGET', KEYS[1], 'room_rate', 'room_window_s')
    local line = room_line(room_keys, room_settings(
      {meta[9], pace[1], pace[2], meta[4], meta[1], meta[2], meta[3], meta[8]}, now_ms), now_ms)
    if ticket > line.frontier then
      if line.sold_out_from > 0 and ticket >= line.sold_out_from then
        -- The units left, not 0: this place is sold out, not the stock (0 would turn on the
        -- gate's sold-out shortcut for every buyer).
        refusal = 'refused\nsold_out\n' .. int(line.stock)
      else
        refusal = 'refused\nnot_your_turn\n' .. int(ticket - line.frontier)
      end
    elseif ticket <= line.expired_through then
      refusal = 'refused\nticket_expired\n0'
    elseif redis.call('ZSCORE', room_keys.used, ticket_arg) then
      refusal = 'refused\nticket_used\n0'
    end
  end
end

-- 4. Per-buyer limit, counting units held and bought. The stock (step 6) is read with the
-- buyer's count: one call, and nothing between here and step 6 writes it.
local limit = tonumber(meta[4])
local holding, stock
if not refusal then
  local counts = redis.call('MGET', KEYS[3], KEYS[2])
  holding, stock = tonumber(counts[1] or '0'), tonumber(counts[2] or '0')
  if holding + qty > limit then
    refusal = 'refused\nbuyer_limit_reached\n' .. int(limit)
  end
end

-- 4b. Holds this buyer took in the quota window, whatever became of them: releasing and
-- reserving again (churn) cannot grow both stores without bound.
if not refusal and quota > 0 then
  local taken = tonumber(redis.call('GET', quota_key) or '0')
  if taken >= quota then
    local left_ms = redis.call('PTTL', quota_key)
    if left_ms < 0 then left_ms = tonumber(quota_window) end
    refusal = 'refused\nhold_quota_reached\n' .. int(left_ms)
  end
end

-- 5. Live holds of this client (opt-in): one client with many buyer ids cannot sweep the sale.
-- Counted in holds, not units: the per-buyer limit already bounds units per hold. An IPv6
-- client is counted at its /64, /56 and /48, each with its own cap: one subscriber usually has
-- a whole /56 (or /48) to rotate through.
local tier_count = 0
local track_client = false
if client_tiers then
  for _ in string.gmatch(client_tiers, '%S+') do tier_count = tier_count + 1 end
  for tier = 1, tier_count do
    if client_limits[tier] > 0 then track_client = true end
  end
end
if not refusal and track_client then
  for tier = 1, tier_count do
    local limit = client_limits[tier]
    if not refusal and limit > 0 and tonumber(redis.call('GET', client_keys[tier]) or '0') >= limit then
      refusal = 'refused\nclient_limit_reached\n' .. int(limit)
    end
  end
end

-- 6. Stock.
if not refusal then
  if stock < qty then
    refusal = 'refused\nsold_out\n' .. int(stock)
  end
end

if new_tat then
  redis.call('SET', rl_key, int(new_tat), 'PX', int(math.ceil((new_tat - now_us) / 1000) + 1000))
end
if refusal then
  return refusal
end

-- Admitted: every write below is unconditional, so the script cannot stop half-way.
local expires_ms = now_ms + tonumber(meta[5]) * 1000
local price, currency = meta[6], meta[7]
local created, expires = int(now_ms), int(expires_ms)
redis.call('DECRBY', KEYS[2], ARGV[3])
-- A buyer's count is needed while the sale sells and its holds may be replayed: past its end
-- plus the idempotency window nobody reads it, so it goes then. A sale without an end keeps it.
-- One SET, from the count read above, writes the count and its expiry together.
if ends_ms > 0 then
  redis.call('SET', KEYS[3], int(holding + qty), 'PXAT', int(ends_ms + tonumber(ARGV[5]) * 1000))
else
  redis.call('SET', KEYS[3], int(holding + qty), 'KEEPTTL')
end
-- One packed value for the hold's hash and its stream entry (hold.lua).
local packed = hold_pack(ARGV[1], ARGV[2], ARGV[6], ARGV[3], price, currency, created, expires)
redis.call('HSET', KEYS[5], 'hold', packed, 'status', 'held')
-- The caller's own fields are written only when given: most holds carry none.
local own = {}
if reference ~= '' then own[#own + 1] = 'ref'; own[#own + 1] = reference end
if metadata ~= '' then own[#own + 1] = 'meta'; own[#own + 1] = metadata end
if #own > 0 then
  redis.call('HSET', KEYS[5], unpack(own))
end
if track_client then
  redis.call('HSET', KEYS[5], 'client', client_tiers)
  for tier = 1, tier_count do
    redis.call('INCR', client_keys[tier])
    redis.call('PEXPIRE', client_keys[tier], int(expires_ms - now_ms + 60000))
  end
end
if quota > 0 and redis.call('INCR', quota_key) == 1 then
  redis.call('PEXPIRE', quota_key, quota_window)
end
redis.call('ZADD', KEYS[6], expires, ARGV[1])
if room_keys then
  redis.call('ZADD', room_keys.used, ticket_arg, ticket_arg)
end
redis.call('SADD', KEYS[8], ARGV[2])
redis.call('EXPIRE', KEYS[8], ARGV[5])
idem_write(KEYS[4], ARGV[5], 'held', ARGV[1], ARGV[3], price, currency, created, expires, ARGV[4])
local event_id = append_reserved(KEYS[7], packed, own)
return 'created\n' .. ARGV[1] .. '\n' .. ARGV[3] .. '\n' .. price .. '\n' .. currency .. '\n' .. created
  .. '\n' .. expires .. '\nheld\n' .. event_id
