-- Shared by the room scripts (after lib.lua). A room's keys share the hash tag {r:NAME}:
-- KEYS[1] 'pd:{r:NAME}' is a hash user -> member JSON {j: joined_at, l: last_seen,
-- md: metadata (JSON text), c: {conn key -> {d: device, l: lingering 0/1}}}, KEYS[2]
-- 'pd:{r:NAME}:z' a sorted set of the member ids (all scores 0: ordered bytewise, for
-- pagination). Events are published on the channel named like KEYS[1].

local function member_devs(m)
  local devs, seen = {}, {}
  for _, c in pairs(m.c) do
    if not seen[c.d] then seen[c.d] = true; devs[#devs + 1] = c.d end
  end
  table.sort(devs)
  return devs
end

local function member_json(user, m)
  return '{"user_id":' .. cjson.encode(user) .. ',"joined_at":' .. string.format('%.3f', m.j) ..
    ',"last_seen":' .. string.format('%.3f', m.l) .. ',"metadata":' .. m.md .. ',"devices":' ..
    devs_json(member_devs(m)) .. '}'
end

-- Publishes an event of the room (with the room's event version, so nodes can tell what
-- they have seen) and returns it.
local function room_event(h, kind, room, user, count, extra)
  local v = redis.call('HINCRBY', h, '\0v', 1)
  local msg = '{"t":"' .. kind .. '","r":' .. cjson.encode(room) .. ',"u":' ..
    cjson.encode(user) .. ',"c":' .. count .. ',"v":' .. v .. extra .. '}'
  redis.call('SPUBLISH', h, msg)
  return msg
end

local function save_member(h, user, m)
  -- cjson writes an empty table as {}: c stays an object whatever it holds.
  redis.call('HSET', h, user, cjson.encode(m))
end
