-- transition.lua — move a hold out of 'held' (docs/DESIGN.md §3): commit, release or expire.
--
-- All checks run before the first write. The deadline is judged on Redis TIME, so a commit
-- racing the expiry sweeper has exactly one winner: whichever script runs first after the
-- deadline expires the hold, and a commit that arrives late expires it itself and says so.
-- Idempotent: a hold that is no longer 'held' is left as it is and its status is returned.
--
-- KEYS: 1 hold (hash), 2 stock (string), 3 buyer (string), 4 idem (hash), 5 holds (zset),
--       6 events (stream), 7 the live-hold counter of the client recorded in the hold (any key
--       of the SKU when the hold records none), 8 the sale-changed channel, 9 and 10 the
--       counters of the /56 and /48 it records for an IPv6 client (any key of the SKU if none)
-- ARGV: 1 hold id, 2 action: 'commit' | 'release' | 'expire', 3 'PUBLISH' | 'SPUBLISH' (how to
--       announce on KEYS[8]), 4 sku (announced when units come back, so that every gate
--       instance drops its sold-out shortcut for the SKU at once), 5 idempotency ttl s (a terminal hold lives
--       as long as the idempotency record that answers for it, then expires: Redis memory is
--       bounded by the holds of the last ttl, not by every hold ever sold)
-- Returns: {'missing'} | {'unchanged', status} | {'changed', new status, event id}

local hold = redis.call('HMGET', KEYS[1], 'status', 'q', 'expires', 'client')
if not hold[1] then
  return {'missing'}
end
if hold[1] ~= 'held' then
  return {'unchanged', hold[1]}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local past_deadline = now_ms >= tonumber(hold[3])
local action = ARGV[2]
local target
if action == 'commit' then
  target = past_deadline and 'expired' or 'committed'
elseif action == 'release' then
  target = 'released'
elseif action == 'expire' then
  if not past_deadline then
    return {'unchanged', 'held'}
  end
  target = 'expired'
else
  return redis.error_reply('unknown action ' .. tostring(action))
end
local answers_for_this_hold = redis.call('HGET', KEYS[4], 'id') == ARGV[1]

-- Every write below is unconditional.
redis.call('HSET', KEYS[1], 'status', target)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
redis.call('ZREM', KEYS[5], ARGV[1])
-- Out of 'held' whatever the target: the hold no longer counts against its client's live holds.
if hold[4] then
  local counters, tier = {KEYS[7], KEYS[9], KEYS[10]}, 0
  for _ in string.gmatch(hold[4], '%S+') do
    tier = tier + 1
    if redis.call('DECR', counters[tier]) <= 0 then redis.call('DEL', counters[tier]) end
  end
end
if target ~= 'committed' then
  -- The units go back on sale and stop counting against the buyer's limit.
  redis.call('INCRBY', KEYS[2], hold[2])
  if redis.call('DECRBY', KEYS[3], hold[2]) <= 0 then redis.call('DEL', KEYS[3]) end
  redis.call(ARGV[3], KEYS[8], ARGV[4])
end
if answers_for_this_hold then
  redis.call('HSET', KEYS[4], 'status', target)
end
local event_id = redis.call('XADD', KEYS[6], '*', 'type', target, 'id', ARGV[1], 'q', hold[2])
return {'changed', target, event_id}
