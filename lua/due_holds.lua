-- due_holds.lua — which of a SKU's holds are past their deadline (docs/DESIGN.md §3).
--
-- Judged on this Redis's own TIME, the clock transition.lua decides expiry by: on a cluster
-- the SKU's master, never a clock read from another node.
--
-- KEYS: 1 holds (zset: hold id -> deadline in ms)
-- ARGV: 1 most ids to return
-- Returns: the ids of up to ARGV[1] holds whose deadline has passed, earliest first

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGE', KEYS[1], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
