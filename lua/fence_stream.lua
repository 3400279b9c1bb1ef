-- fence_stream.lua — make a SKU's stream continue from the settlement cursor again (resync).
--
-- The settler reads after its cursor and trims only below it, so a healthy stream always holds
-- the cursor's own entry. When it does not, the stream was lost or replaced (a failover to a
-- replica that lagged, a restore from an old dump, an evicting policy): the entries it has may
-- sort below the cursor, where the settler would never read them. This script recreates such a
-- stream as: one 'fence' entry at the cursor, then the entries that sorted above the cursor, in
-- their order and with their ids. Every later XADD sorts above the fence. The entries that sorted
-- below the cursor are dropped: what they recorded is still in the holds they name, and resync
-- records it again from there (rerecord_hold.lua).
--
-- KEYS: 1 events (stream)
-- ARGV: 1 the settlement cursor (never '0-0': an unsettled SKU has nothing to fence)
-- Returns: {'intact', 0} when the stream holds the cursor's entry, else {'fenced', dropped entries}

if redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1] then
  return {'intact', 0}
end
local above = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+')
local dropped = redis.call('XLEN', KEYS[1]) - #above
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[1], ARGV[1], 'type', 'fence')
for _, entry in ipairs(above) do
  redis.call('XADD', KEYS[1], entry[1], unpack(entry[2]))
end
return {'fenced', dropped}
