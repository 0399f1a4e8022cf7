-- A connection leaves a room: mode 0 now, 1 grace, 2 final; reason 0 left, 1 disconnected,
-- 2 timeout, 3 revoked. Returns 'L' (lingering), 'N' (the connection was not there, or revived), 'R'
-- (removed, nothing to announce) or the event it published.
-- KEYS: h, z. ARGV: room, user, conn key, mode, reason.
local h, z = KEYS[1], KEYS[2]
local room, user, ck, mode, reason = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5])
local raw = redis.call('HGET', h, user)
if not raw then return 'N' end
local m = cjson.decode(raw)
local c = m.c[ck]
if c == nil then return 'N' end
if mode == 2 and tonumber(c.l) ~= 1 then return 'N' end
local others = false
for k, o in pairs(m.c) do if k ~= ck and tonumber(o.l) ~= 1 then others = true end end
local t = now()
if not others and mode == 1 then
  c.l = 1
  m.l = t
  save_member(h, user, m)
  return 'L'
end
if not others then
  redis.call('HDEL', h, user)
  redis.call('ZREM', z, user)
  return room_event(h, 'l', room, user, redis.call('ZCARD', z), ',"why":' .. reason .. hide_field(m))
end
local before = devs_json(member_devs(m))
m.c[ck] = nil
save_member(h, user, m)
if devs_json(member_devs(m)) ~= before then
  return room_event(h, 'u', room, user, redis.call('ZCARD', z),
                    ',"m":' .. member_json(user, m) .. hide_field(m))
end
return 'R'
