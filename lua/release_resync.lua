-- release_resync.lua — forget a job as the SKU's running resync, if it still is.
--
-- KEYS: 1 resync:running (string)
-- ARGV: 1 job id
-- Returns: 1 when it was forgotten, 0 when another (or none) is named

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
