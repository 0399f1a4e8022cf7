-- A connection joins (or re-joins) a room. Returns {"fresh":bool,"count":n,"m":member,
-- "ev":event or null}, or an error FULL (max members) or LIMIT (the member's connections).
-- Safe to repeat.
-- KEYS: h, z. ARGV: room, user, conn key, device, metadata ('' keeps), max members,
-- max connections per member, the member's hide list (a JSON array).
local h, z = KEYS[1], KEYS[2]
local room, user, ck, dev, md = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_members, max_conns = tonumber(ARGV[6]), tonumber(ARGV[7])
local hide = hide_arg(ARGV[8] or '[]')
local t = now()
local raw = redis.call('HGET', h, user)
local m, fresh = nil, false
if raw then
  m = cjson.decode(raw)
else
  if redis.call('ZCARD', z) >= max_members then return redis.error_reply('FULL room is full') end
  fresh = true
  m = {j = t, l = t, md = (md ~= '' and md or '{}'), c = {}}
end
local before = devs_json(member_devs(m))
if m.c[ck] == nil then
  local live = 0
  for _, c in pairs(m.c) do if tonumber(c.l) ~= 1 then live = live + 1 end end
  if live >= max_conns then return redis.error_reply('LIMIT too many connections') end
  -- A new connection of the member ends its lingering ones (a reload is not a leave).
  for k, c in pairs(m.c) do if tonumber(c.l) == 1 then m.c[k] = nil end end
end
m.c[ck] = {d = dev, l = 0}
m.l = t
local changed = devs_json(member_devs(m)) ~= before
if not fresh and md ~= '' and md ~= m.md then m.md = md; changed = true end
local flips = fresh and {} or hide_flips(m.b, hide)
m.b = hide
save_member(h, user, m)
if fresh then redis.call('ZADD', z, 0, user) end
local count = redis.call('ZCARD', z)
local mj = member_json(user, m)
local ev = 'null'
if #flips > 0 then
  room_event(h, 'h', room, user, count, ',"m":' .. mj .. hide_field(m) .. ',"x":' .. ids_json(flips))
end
if fresh then
  ev = room_event(h, 'j', room, user, count, ',"m":' .. mj .. hide_field(m))
elseif changed then
  ev = room_event(h, 'u', room, user, count, ',"m":' .. mj .. hide_field(m))
end
return '{"fresh":' .. (fresh and 'true' or 'false') .. ',"count":' .. count .. ',"m":' .. mj ..
  ',"ev":' .. ev .. '}'
