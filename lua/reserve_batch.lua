-- reserve_batch.lua — decide several reservations of one SKU in one call, in order
-- (FLASHGATE_RESERVE_BATCH). Preceded by room.lua and by reserve.lua wrapped as
-- `local function decide(KEYS, ARGV) ... end` (see src/gate/scripts.rs): each decision is
-- exactly reserve.lua's, on its own keys and arguments, so a batch answers what the same
-- requests sent one by one in this order would.
--
-- KEYS: n × 16, request i's reserve.lua KEYS at (i - 1) × 16 + 1 .. i × 16
-- ARGV: 1 n, then n × 19, request i's reserve.lua ARGV at 1 + (i - 1) × 19 + 1 .. 1 + i × 19
-- Returns n replies, each reserve.lua's.

local n = tonumber(ARGV[1])
local keys_each, args_each = 16, 19
local replies = {}
for i = 0, n - 1 do
  local keys, args = {}, {}
  for j = 1, keys_each do keys[j] = KEYS[i * keys_each + j] end
  for j = 1, args_each do args[j] = ARGV[1 + i * args_each + j] end
  replies[i + 1] = decide(keys, args)
end
return replies
