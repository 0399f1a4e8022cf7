-- A member's metadata. Returns 'OK' (unchanged), 'N' (not a member) or the event published.
-- KEYS: h, z.
-- ARGV: room, user, metadata.
local h, z = KEYS[1], KEYS[2]
local raw = redis.call('HGET', h, ARGV[2])
if not raw then return 'N' end
local m = cjson.decode(raw)
m.l = now()
local changed = m.md ~= ARGV[3]
m.md = ARGV[3]
save_member(h, ARGV[2], m)
if changed then
  return room_event(h, 'u', ARGV[1], ARGV[2], redis.call('ZCARD', z),
                    ',"m":' .. member_json(ARGV[2], m) .. hide_field(m))
end
return 'OK'
