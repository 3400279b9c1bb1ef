-- set_buyer_counts.lua — set buyers' counts against their limit to what Postgres records (resync).
--
-- A buyer's count is the units of their held and committed holds; resync computes it from
-- Postgres once every hold Redis had is settled there, and sets it here absolutely, so a resync
-- run any number of times never counts a hold twice. A count of 0 deletes the key.
--
-- KEYS: the buyer keys (string), all of one SKU
-- ARGV: their counts, in the same order
-- Returns: how many keys were set or deleted

for i, key in ipairs(KEYS) do
  local count = tonumber(ARGV[i])
  if count > 0 then
    redis.call('SET', key, count)
  else
    redis.call('DEL', key)
  end
end
return #KEYS
