-- A member's hide list (the users they block, store_hide_t) changed. Returns 'N' (not a
-- member), 'OK' (no change: another node of theirs wrote it first) or the event published:
-- 'h' with the member and "x", the users now hidden from or shown the member.
-- KEYS: h, z. ARGV: room, user, hide list (a JSON array).
local h, z = KEYS[1], KEYS[2]
local raw = redis.call('HGET', h, ARGV[2])
if not raw then return 'N' end
local m = cjson.decode(raw)
local hide = hide_arg(ARGV[3])
local flips = hide_flips(m.b, hide)
if #flips == 0 then return 'OK' end
m.b = hide
save_member(h, ARGV[2], m)
return room_event(h, 'h', ARGV[1], ARGV[2], redis.call('ZCARD', z),
                  ',"m":' .. member_json(ARGV[2], m) .. hide_field(m) .. ',"x":' .. ids_json(flips))
