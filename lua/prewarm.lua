-- prewarm.lua — open a sale in Redis from its Postgres record.
--
-- Refuses to overwrite a live sale (its meta hash exists) unless forced: overwriting stock while
-- holds are outstanding would hand out units twice. The check runs before the first write.
--
-- KEYS: 1 meta (hash), 2 stock (string)
-- ARGV: 1 force ('1' or '0'), 2 available units, then field/value pairs for meta
-- Returns: 'ok' or 'live'

if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 'live'
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SET', KEYS[2], ARGV[2])
return 'ok'
