-- One change of a user's settings. op: 0 visibility, 1 add contact, 2 remove contact,
-- 3 block, 4 unblock. Returns 'OK' or an error LIMIT. Publishes {"t":"v"} on change.
-- KEYS: p, c, b. ARGV: uid, op, visibility, other, max.
local p, c, b = KEYS[1], KEYS[2], KEYS[3]
local uid, op, vis, other, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4],
  tonumber(ARGV[5])
local changed = false
if op == 0 then
  changed = tonumber(hget(p, 'vis') or 0) ~= vis
  redis.call('HSET', p, 'vis', vis, 'k', 1)
else
  local set = (op == 3 or op == 4) and b or c
  if op == 1 or op == 3 then
    if redis.call('SISMEMBER', set, other) == 0 then
      if redis.call('SCARD', set) >= max then return redis.error_reply('LIMIT list full') end
      redis.call('SADD', set, other)
      changed = true
    end
  else
    changed = redis.call('SREM', set, other) == 1
  end
  redis.call('HSET', p, 'k', 1)
end
if changed then redis.call('SPUBLISH', p, '{"t":"v","u":' .. cjson.encode(uid) .. '}') end
return 'OK'
