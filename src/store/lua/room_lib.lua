-- Shared by the room scripts (after lib.lua). A room's keys share the hash tag {r:NAME}:
-- KEYS[1] 'pd:{r:NAME}' is a hash user -> member JSON {j: joined_at, l: last_seen,
-- md: metadata (JSON text), c: {conn key -> {d: device, l: lingering 0/1}}}, KEYS[2]
-- 'pd:{r:NAME}:z' a sorted set of the member ids (all scores 0: ordered bytewise, for
-- pagination). Events are published on the channel named like KEYS[1].
-- A member's b (absent when empty) is their hide list (store.h, store_hide_t): the users they
-- block, sorted, as their node knows it; every event about the member carries it ("b") and
-- member lists asked for by a user leave out the members hiding from them.

local function ids_json(ids)
  local parts = {}
  for i = 1, #ids do parts[i] = cjson.encode(ids[i]) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- ',"b":[...]' for an event about m, or '' when m hides from nobody.
local function hide_field(m)
  if m.b == nil or #m.b == 0 then return '' end
  return ',"b":' .. ids_json(m.b)
end

local function hides(m, user)
  if m.b == nil then return false end
  for i = 1, #m.b do if m.b[i] == user then return true end end
  return false
end

-- The users in exactly one of two hide lists (the C copy: store_local.c hide_diff).
local function hide_flips(a, b)
  local seen, out = {}, {}
  for _, x in ipairs(a or {}) do seen[x] = 1 end
  for _, x in ipairs(b or {}) do
    if seen[x] then seen[x] = nil else out[#out + 1] = x end
  end
  for x in pairs(seen) do out[#out + 1] = x end
  table.sort(out)
  return out
end

-- A hide list from its JSON text (ARGV): nil when empty.
local function hide_arg(text)
  local ids = cjson.decode(text)
  if type(ids) ~= 'table' or #ids == 0 then return nil end
  return ids
end

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
  -- the caller's extra includes hide_field(m): whom the event is about is hidden from
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
