-- due_holds.lua — which of a SKU's holds are past their deadline, and when the next one falls
-- due (docs/DESIGN.md §3).
--
-- Judged on this Redis's own TIME, the clock transition.lua decides expiry by: on a cluster
-- the SKU's master, never a clock read from another node. The next deadline is answered as a
-- span from now, so the caller can wait for it on its own monotonic clock without comparing
-- clocks.
--
-- KEYS: 1 holds (zset: hold id -> deadline in ms)
-- ARGV: 1 most ids to return
-- Returns: { ms until the earliest hold not yet due falls due, or -1 when there is none;
--            the ids of up to ARGV[1] holds whose deadline has passed, earliest first }

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', KEYS[1], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
local next_due = redis.call('ZRANGE', KEYS[1], '(' .. now_ms, '+inf', 'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
local next_in = -1
if next_due[2] then
  next_in = math.max(0, tonumber(next_due[2]) - now_ms)
end
return { next_in, due }
