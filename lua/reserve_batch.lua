-- reserve_batch.lua — decide several reservations of one SKU in one call, in order
-- (FLASHGATE_RESERVE_BATCH). Preceded by room.lua and by reserve.lua wrapped as
-- `local function decide(KEYS, ARGV) ... end` (see src/gate/scripts.rs): each decision is
-- exactly reserve.lua's, on its own keys and arguments, so a batch answers what the same
-- requests sent one by one in this order would.
--
-- A reserve.lua call sends only the optional keys and arguments its request uses, so each
-- request says how many it has:
-- KEYS: each request's reserve.lua KEYS, one request after another
-- ARGV: 1 n, then per request: its key count, its argument count, its reserve.lua ARGV
-- Returns n replies, each reserve.lua's.

local n = tonumber(ARGV[1])
local replies = {}
local next_key, next_arg = 1, 2
for i = 1, n do
  local key_count, arg_count = tonumber(ARGV[next_arg]), tonumber(ARGV[next_arg + 1])
  next_arg = next_arg + 2
  local keys, args = {}, {}
  for j = 1, key_count do keys[j] = KEYS[next_key + j - 1] end
  for j = 1, arg_count do args[j] = ARGV[next_arg + j - 1] end
  next_key, next_arg = next_key + key_count, next_arg + arg_count
  replies[i] = decide(keys, args)
end
return replies
