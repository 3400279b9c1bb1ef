-- transition.lua — move a hold out of 'held' (docs/DESIGN.md §3): commit, release or expire.
-- Preceded by idempotency.lua and hold.lua.
--
-- One round trip: the script reads the hold itself and derives the keys the hold names (its
-- buyer's count, its idempotency record, its client's counters) from the SKU's key prefix, all
-- in the SKU's hash tag, so they live in the declared keys' slot and the script runs unchanged
-- on Redis Cluster. The derived names follow gate/keys.rs exactly.
--
-- All checks run before the first write. The deadline is judged on Redis TIME, so a commit
-- racing the expiry sweeper has exactly one winner: whichever script runs first after the
-- deadline expires the hold, and a commit that arrives late expires it itself and says so.
-- Idempotent: a hold that is no longer 'held' is left as it is and returned as it is.
--
-- KEYS: 1 hold (hash), 2 stock (string), 3 holds (zset), 4 events (stream), 5 the
--       sale-changed channel
-- ARGV: 1 hold id, 2 action: 'commit' | 'release' | 'expire', 3 'PUBLISH' | 'SPUBLISH' (how to
--       announce on KEYS[5]), 4 sku (announced when units come back, so that every gate
--       instance drops its sold-out shortcut for the SKU at once), 5 idempotency ttl s (a
--       terminal hold lives as long as the idempotency record that answers for it, then
--       expires: Redis memory is bounded by the holds of the last ttl, not by every hold ever
--       sold), 6 the SKU's key prefix ('<namespace>:{<sku>}:'), 7 the buyer the caller acts
--       for ('' = any: a payments credential, the admin, the sweeper)
-- Returns one string, its parts separated by newlines (no field name or value holds one: the
-- metadata is compact JSON, a reference has no control characters), as reserve.lua does:
--   missing | not_yours | unchanged field value ... | changed event_id field value ...
-- the hold's fields as HGETALL gives them, its status the new one (the packed `hold` value spans
-- its eight lines, hold.lua).

local fields = redis.call('HGETALL', KEYS[1])
local hold = hold_read(fields)
if not hold then
  return 'missing'
end
local status_at = 0
for i = 1, #fields, 2 do
  if fields[i] == 'status' then status_at = i + 1 end
end
if ARGV[7] ~= '' and hold.buyer ~= ARGV[7] then
  return 'not_yours'
end
if hold.status ~= 'held' then
  return 'unchanged\n' .. table.concat(fields, '\n')
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local past_deadline = now_ms >= tonumber(hold.expires)
local action = ARGV[2]
local target
if action == 'commit' then
  target = past_deadline and 'expired' or 'committed'
elseif action == 'release' then
  target = 'released'
elseif action == 'expire' then
  if not past_deadline then
    return 'unchanged\n' .. table.concat(fields, '\n')
  end
  target = 'expired'
else
  return redis.error_reply('unknown action ' .. tostring(action))
end
local prefix = ARGV[6]
local idem = prefix .. 'idem:' .. hold.buyer .. ':' .. hold.idem

-- Every write below is unconditional.
redis.call('HSET', KEYS[1], 'status', target)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[1])
-- Out of 'held' whatever the target: the hold no longer counts against its client's live holds.
if hold.client then
  for tier in string.gmatch(hold.client, '%S+') do
    local counter = prefix .. 'client:' .. tier
    if redis.call('DECR', counter) <= 0 then redis.call('DEL', counter) end
  end
end
if target ~= 'committed' then
  -- The units go back on sale and stop counting against the buyer's limit.
  local buyer = prefix .. 'buyer:' .. hold.buyer
  redis.call('INCRBY', KEYS[2], hold.q)
  if redis.call('DECRBY', buyer, hold.q) <= 0 then redis.call('DEL', buyer) end
  redis.call(ARGV[3], KEYS[5], ARGV[4])
end
idem_move(idem, ARGV[1], target)
local event_id = redis.call('XADD', KEYS[4], '*', 'type', target, 'id', ARGV[1], 'q', hold.q)
fields[status_at] = target
return 'changed\n' .. event_id .. '\n' .. table.concat(fields, '\n')
