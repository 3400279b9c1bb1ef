-- release_lease.lua — end a holder's lease, if it still holds it (a lease that lapsed may be
-- another's by now).
--
-- KEYS: 1 the lease (string)
-- ARGV: 1 the holder's id
-- Returns: 1 when it was ended, 0 when another (or none) holds it

if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
