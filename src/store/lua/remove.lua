-- A session leaves: mode 0 now, 1 grace (lingers when it is the last live one), 2 final
-- (removes a lingering one). Returns 'L' (lingering), 'N' (nothing to do: gone, or revived
-- before a final removal) or the presence after the removal. Safe to repeat.
-- KEYS: p, s. ARGV: uid, session key, mode.
local p, s = KEYS[1], KEYS[2]
local uid, sk, mode = ARGV[1], ARGV[2], tonumber(ARGV[3])
local raw = redis.call('HGET', s, sk)
if not raw then return 'N' end
local x = cjson.decode(raw)
if mode == 2 and tonumber(x.l) ~= 1 then return 'N' end
local t = now()
if mode == 1 then
  local others = false
  for _, y in ipairs(sessions(s)) do
    if y.key ~= sk and tonumber(y.l) ~= 1 then others = true end
  end
  if not others then
    x.l = 1
    redis.call('HSET', s, sk, cjson.encode(x))
    redis.call('HSET', p, 'ls', t)
    return 'L'
  end
end
local b = before_state(p)
redis.call('HDEL', s, sk)
redis.call('HSET', p, 'd', x.d)
-- The end of a grace window is no sign of life: last_seen stays at the disconnect.
if mode ~= 2 then redis.call('HSET', p, 'ls', t) end
return finish(uid, p, s, b, t)
