-- claim_lease.lua — name a holder of one of the SKU's leases (its running resync, the change
-- of the sale under way), unless another holds it.
--
-- KEYS: 1 the lease (string)
-- ARGV: 1 the holder's id, 2 lease in ms
-- Returns: the current holder's id, or false when this holder now holds the lease

local holder = redis.call('GET', KEYS[1])
if holder then
  return holder
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
