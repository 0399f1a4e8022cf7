-- Shared by every presenced script (the C side puts it in front of each one).
--
-- A user's keys share the hash tag {u:ID}: KEYS[1] 'pd:{u:ID}' is a hash of the user's
-- visible state and fields, KEYS[2] 'pd:{u:ID}:s' a hash of sessions ('node/sid' -> JSON
-- {d: device, s: claim, l: lingering 0/1, t: order of last update}), 'pd:{u:ID}:c' and
-- 'pd:{u:ID}:b' the contact and block sets. Changes are published (SPUBLISH) on the channel
-- named like the first key. Time is Redis's own (TIME), the same for every node.
--
-- User hash fields: k (known), st (visible status), dj (devices, JSON), d (last device),
-- ls (last_seen), v (version), seq (update order), cs/cse (custom status, expiry),
-- a/ae (activity, expiry), ss/sse (a backend's status claim, expiry), vis (visibility).

local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

local function jstr(s)
  if s == nil or s == false then return 'null' end
  return cjson.encode(s)
end

local function sessions(skey)
  local all = redis.call('HGETALL', skey)
  local out = {}
  for i = 1, #all, 2 do
    local v = cjson.decode(all[i + 1])
    v.key = all[i]
    out[#out + 1] = v
  end
  return out
end

local function hget(key, name)
  local v = redis.call('HGET', key, name)
  if v == false then return nil end
  return v
end

-- The fields as shown at time t (expired ones as absent); with clear, expired ones are
-- removed from the hash too.
local function fields(p, t, clear)
  local h = redis.call('HMGET', p, 'cs', 'cse', 'a', 'ae', 'ss', 'sse')
  local cs, a, ss = h[1] or nil, h[3] or nil, tonumber(h[5] or 0) or 0
  local function due(x) local e = tonumber(x or 0) or 0; return e > 0 and e <= t end
  if cs and due(h[2]) then cs = nil; if clear then redis.call('HDEL', p, 'cs', 'cse') end end
  if a and due(h[4]) then a = nil; if clear then redis.call('HDEL', p, 'a', 'ae') end end
  if ss > 0 and due(h[6]) then ss = 0; if clear then redis.call('HDEL', p, 'ss', 'sse') end end
  return cs, a, ss
end

-- The aggregate of live claims: busy > online > away; a backend's claim counts only beside
-- a session. Devices distinct and sorted; the latest device is the last updated session's.
local function aggregate(list, ss)
  local best, devs, seen, latest, lt = 0, {}, {}, nil, -1
  for _, x in ipairs(list) do
    local c = tonumber(x.s)
    if c < 1 then c = 1 end
    if c > best then best = c end
    if not seen[x.d] then seen[x.d] = true; devs[#devs + 1] = x.d end
    if tonumber(x.t) > lt then lt = tonumber(x.t); latest = x.d end
  end
  if #list > 0 and ss > best then best = ss end
  table.sort(devs)
  return best, devs, latest
end

local function devs_json(devs)
  local parts = {}
  for i, d in ipairs(devs) do parts[i] = cjson.encode(d) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- A presence as nodes read it; ch tells the caller whether this call changed it.
local function payload(uid, st, ls, d, devs, cs, a, v, ps, ch)
  return '{"t":"p","u":' .. cjson.encode(uid) .. ',"s":' .. st .. ',"ls":' ..
    string.format('%.3f', ls) .. ',"d":' .. jstr(d or '') .. ',"ds":' .. devs_json(devs) ..
    ',"cs":' .. jstr(cs) .. ',"a":' .. jstr(a) .. ',"v":' .. v .. ',"ps":' .. ps .. ',"ch":' ..
    (ch and 1 or 0) .. '}'
end

-- What watchers saw last: the stored aggregate and the texts as stored.
local function before_state(p)
  local h = redis.call('HMGET', p, 'st', 'dj', 'cs', 'a')
  return {st = tonumber(h[1] or 0), dj = h[2] or '[]', cs = h[3] or nil, a = h[4] or nil}
end

-- Applies field changes f (ops: 0 keep, 1 clear, 2 set; expiries in seconds from now).
local function apply_fields(p, fj, t)
  if fj == nil or fj == '' then return end
  local f = cjson.decode(fj)
  local function one(op, name, value, ename, ein)
    if op == 1 then
      redis.call('HDEL', p, name, ename)
    elseif op == 2 then
      local e = 0
      if ein and ein > 0 then e = t + ein end
      redis.call('HSET', p, name, value, ename, e)
    end
  end
  one(f.cso, 'cs', f.cs, 'cse', f.csi)
  one(f.ao, 'a', f.a, 'ae', f.ai)
  one(f.sso, 'ss', f.ss, 'sse', f.ssi)
end

-- Computes the visible state after a change, stores it and, when it differs from before,
-- bumps the version and publishes it. Returns the payload.
local function finish(uid, p, s, b, t)
  local cs, a, ss = fields(p, t, true)
  local st, devs, latest = aggregate(sessions(s), ss)
  local dj = devs_json(devs)
  local changed = st ~= b.st or dj ~= b.dj or cs ~= b.cs or a ~= b.a
  local v = tonumber(hget(p, 'v') or 0)
  if changed then v = redis.call('HINCRBY', p, 'v', 1) end
  if latest then redis.call('HSET', p, 'd', latest) end
  redis.call('HSET', p, 'st', st, 'dj', dj)
  local msg = payload(uid, st, tonumber(hget(p, 'ls') or 0), latest or hget(p, 'd'), devs, cs,
                      a, v, b.st, changed)
  if changed then redis.call('SPUBLISH', p, msg) end
  return msg
end

-- The privacy rule: requester r may see user (hash p, contacts c, blocked b).
local function may_see(uid, p, c, b, r)
  if r == uid then return true end
  if redis.call('SISMEMBER', b, r) == 1 then return false end
  local vis = tonumber(hget(p, 'vis') or 0)
  return vis == 0 or (vis == 1 and redis.call('SISMEMBER', c, r) == 1)
end
