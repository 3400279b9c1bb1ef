-- claim_resync.lua — name a job the SKU's running resync, unless one runs already.
--
-- KEYS: 1 resync:running (string)
-- ARGV: 1 job id, 2 lease in ms
-- Returns: the running job's id, or false when this job is now the running one

local running = redis.call('GET', KEYS[1])
if running then
  return running
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
