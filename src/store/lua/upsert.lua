-- A session announces itself or changes its claim or device, with user fields.
-- KEYS: p, s. ARGV: uid, session key, device, claim, fields JSON, max live sessions.
local p, s = KEYS[1], KEYS[2]
local uid, sk, dev, claim, fj, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5],
  tonumber(ARGV[6])
local t = now()
local b = before_state(p)
if redis.call('HEXISTS', s, sk) == 0 then
  local list, live = sessions(s), 0
  for _, x in ipairs(list) do if tonumber(x.l) ~= 1 then live = live + 1 end end
  if live >= max then return redis.error_reply('LIMIT too many sessions') end
  -- The user is back: their lingering sessions end now, unannounced.
  for _, x in ipairs(list) do
    if tonumber(x.l) == 1 then redis.call('HDEL', s, x.key) end
  end
end
apply_fields(p, fj, t)
local seq = redis.call('HINCRBY', p, 'seq', 1)
redis.call('HSET', s, sk, cjson.encode({d = dev, s = claim, l = 0, t = seq}))
redis.call('HSET', p, 'k', 1, 'ls', t)
return finish(uid, p, s, b, t)
